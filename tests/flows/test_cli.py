"""The `mars` command as a user meets it: `inspect` reports, error messages, and what a failed run prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main
from mars_core.model.base import torchvision_problem
from tests.mars_core.model.tiny_families import save_family, save_qwen2_vl_files_without_processor

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def llava_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "llava"
    assert save_family("llava", folder) is None
    return folder


def test_inspect_prints_modules(llava_folder, capsys):
    code = main(["inspect", str(llava_folder)])
    out = capsys.readouterr().out

    assert code == 0
    assert "architecture: LlavaForConditionalGeneration (model_type llava)" in out
    assert "vision: model.vision_tower, 19,328 parameters, 12 linear layers, 896 trainable parameters per unit of rank" in out
    assert "llm: model.language_model," in out
    assert "    model.language_model.layers.0.self_attn.q_proj" in out
    assert "warning" not in out


def test_inspect_summary_leaves_out_layers(llava_folder, capsys):
    code = main(["inspect", "--summary", str(llava_folder)])
    out = capsys.readouterr().out

    assert code == 0
    assert "projector: model.multi_modal_projector" in out
    assert "q_proj" not in out


def test_inspect_missing_folder_exits_2(tmp_path, capsys):
    code = main(["inspect", str(tmp_path / "absent")])
    err = capsys.readouterr().err

    assert code == 2
    assert err.startswith("mars: error: ")
    assert "absent" in err


@pytest.mark.skipif(torchvision_problem() is None, reason="torchvision imports here, so the processor loads")
def test_inspect_warns_without_torchvision(tmp_path, capsys):
    folder = tmp_path / "qwen2_vl"
    save_qwen2_vl_files_without_processor(folder)

    code = main(["inspect", "--summary", str(folder)])
    out = capsys.readouterr().out

    assert code == 0
    assert "vision: model.visual," in out
    assert "warning: `mars run` would stop at the base-model stage" in out
    assert "torchvision is not installed" in out


def test_config_error_names_overrides(tmp_path, capsys):
    config = tmp_path / "search.yaml"
    config.write_text("probes:\n  max_rank: 16\n")

    code = main(["run", "--config", str(config), "probes.joint_probes=4"])
    err = capsys.readouterr().err

    assert code == 2
    assert f"invalid configuration in {config} with the overrides probes.joint_probes=4: " in err
    assert "set probes.joint_probes=6 or more" in err
    assert "Value error" not in err


@pytest.mark.slow
def test_failed_run_hides_traceback(tmp_path, llava_folder):
    # A row that points at a missing image fails the dataset stage, inside the flow.
    from PIL import Image

    records = []
    for index in range(6):
        name = f"{index}.png"
        if index:
            Image.new("RGB", (8, 8), (40 * index, 0, 0)).save(tmp_path / name)
        records.append({"id": str(index), "image": name, "conversations": [
            {"from": "human", "value": "<image>\nwhat digit ?"}, {"from": "gpt", "value": "one"}]})
    (tmp_path / "data.json").write_text(json.dumps(records))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "MLFLOW_"))}

    process = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--workdir", str(tmp_path / "work"), "--no-progress",
         f"model.name_or_path={llava_folder}", "data.source=llava_json", f"data.path={tmp_path / 'data.json'}"],
        cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=300,
    )

    assert process.returncode == 1
    assert process.stderr.count("mars: error: the search failed: DatasetError:") == 1
    assert "image_not_found" in process.stderr
    assert "Add -v to see the traceback." in process.stderr
    assert "Traceback" not in process.stderr


@pytest.mark.parametrize(("argv", "verbose"), [
    (["run"], False), (["-v", "run"], True), (["run", "-v"], True), (["inspect", "demo", "--verbose"], True),
])
def test_verbose_flag_either_side(argv, verbose):
    from flows.cli import _build_parser

    assert _build_parser().parse_args(argv).verbose is verbose


def _summary(**changes) -> dict:
    summary = {
        "run_name": "r", "modules": ["vision", "llm"], "chosen": {"llm": 4, "vision": 32}, "fallback_reason": None,
        "candidates_after_pruning": 6, "tied_candidates": 1,
        "probes": {"total": 24, "trained": 24, "cached": 0, "failed": 0},
        "laws": {"convergence": {"llm": {"r2": 0.99, "loo_rel_error": 0.1}, "vision": {"r2": 0.74, "loo_rel_error": 0.3}},
                 "performance": {"form": "base", "r2": -0.0, "loo_rel_error": 0.05}},
        "final": {"val_loss": 0.8, "predicted_val_loss": 0.7, "test_loss": 0.79, "test_accuracy": 0.34},
        "cost": {"probe_seconds": 270, "probe_samples": 63648, "final_seconds": 11, "final_samples": 4096},
        "paths": {"summary": "s.json", "adapter": "a", "run_dir": "d"},
        "mlflow": {"tracking_uri": "sqlite:///m.db", "run_id": "x"},
    }
    summary.update(changes)
    return summary


def test_summary_order_and_alignment():
    from flows.cli import format_summary

    lines = format_summary(_summary()).splitlines()

    assert "  chosen ranks        vision 32, llm 4" in lines
    assert lines.index("  Law-T vision        R^2 0.7400   LOO rel. error 0.3000") < lines.index(
        "  Law-T llm           R^2 0.9900   LOO rel. error 0.1000")
    assert "  Law-P (base)        R^2 0.0000   LOO rel. error 0.0500" in lines
    assert "tie" not in format_summary(_summary())


def test_summary_reports_tie():
    from flows.cli import format_summary

    text = format_summary(_summary(tied_candidates=4))

    assert "6 aligned after pruning; 4 tie within Law-P's standard error, so the fewest trainable parameters decided" in text
