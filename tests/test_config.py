import pytest
from pydantic import ValidationError

from mars_core.config import MarsConfig, describe_defaults, load_config


def test_defaults_are_the_demo():
    cfg = MarsConfig()
    assert cfg.data.source == "demo_digits"
    assert cfg.model.name_or_path == "demo"
    assert cfg.probes.grid() == [2, 4, 8, 16, 32, 64, 128]


def test_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("probes:\n  max_rank: 64\n")
    cfg = load_config(path, ["search.max_trainable_params=1000", "probes.data_fractions=[0.2, 0.4]"])
    assert cfg.probes.max_rank == 64
    assert cfg.search.max_trainable_params == 1000
    assert cfg.probes.data_fractions == (0.2, 0.4)


@pytest.mark.parametrize(
    "override, field",
    [
        ("probes.max_rank=96", "max_rank"),
        ("probes.min_rank=256", "min_rank"),
        ("probes.data_fractions=[0.6, 0.3]", "data_fractions"),
        ("probes.unknown=1", "unknown"),
    ],
)
def test_invalid_values_name_the_field(override, field):
    with pytest.raises(ValidationError, match=field):
        load_config(None, [override])


def test_default_ranks_must_cover_every_module():
    with pytest.raises(ValidationError, match="audio"):
        load_config(None, ["lora.modules=[vision, llm, audio]"])


@pytest.mark.parametrize(
    "overrides, needed",
    [
        (["probes.joint_probes=5"], 6),
        (["probes.joint_probes=7", "search.law_p_form=capacity"], 8),
        (["probes.joint_probes=3", "lora.modules=[llm]", "search.default_ranks={llm: 8}"], 4),
    ],
)
def test_too_few_joint_probes_rejected(overrides, needed):
    with pytest.raises(ValidationError, match=f"probes.joint_probes=.* is too few.*set probes.joint_probes={needed}"):
        load_config(None, overrides)
    load_config(None, [o for o in overrides if "joint_probes" not in o] + [f"probes.joint_probes={needed}"])


def test_small_rank_grid_rejected():
    with pytest.raises(ValidationError, match="gives 4 distinct joint probes, but Law-P needs at least 6"):
        load_config(None, ["probes.max_rank=4", "probes.joint_probes=6"])
    load_config(None, ["probes.max_rank=8", "probes.joint_probes=6"])


def test_override_without_equals_sign_is_rejected():
    with pytest.raises(ValueError, match="section.key=value"):
        load_config(None, ["probes.max_rank"])


def test_digest_changes_with_content():
    a = load_config(None, [])
    b = load_config(None, ["train.learning_rate=0.01"])
    assert a.digest() != b.digest()
    assert a.digest("probes") == b.digest("probes")


def test_describe_defaults_documents_every_field():
    text = describe_defaults()
    for section_name, section in MarsConfig.model_fields.items():
        assert f"{section_name}:" in text
        for name in section.annotation.model_fields:
            assert f"  {name}: " in text
