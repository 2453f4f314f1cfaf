"""`mars run` on tiny models of real families, each with a dataset the test writes in one supported format.

Every family runs the whole pipeline once. The three formats (LLaVA
conversation JSON, Parquet VQA, Parquet in the ScienceQA layout) rotate over
the families. LLaVA runs all three, and also a Hugging Face dataset saved to
disk where ``datasets`` is installed. The images are scikit-learn's
handwritten digits, written out as PNG files or Parquet bytes.

Families whose processor needs torchvision are marked ``torchvision`` and
skip where it does not import. `make test` runs them in a second environment
that has it, so every family is covered.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from flows.cli import main
from mars_core.model.modules import split_model
from tests.mars_core.model.tiny_families import FAMILIES, family_params, save_family

pytestmark = pytest.mark.slow

FORMATS = ("llava_json", "parquet", "scienceqa")
# A Hugging Face dataset saved to disk, run on LLaVA only.
HF_DISK = "hf_disk"
NAMES = "zero one two three four five six seven eight nine".split()
EXAMPLES = 60

CASES = [("llava", data_format) for data_format in (*FORMATS, HF_DISK)] + [
    (family, FORMATS[index % len(FORMATS)]) for index, family in enumerate(f for f in FAMILIES if f != "llava")
]

# The smallest search that still fits both laws: ranks 2 to 8, module probes at 2 and 8, six joint probes.
TINY = [
    "probes.min_rank=2",
    "probes.max_rank=8",
    "probes.ranks_per_module=2",
    "probes.joint_probes=6",
    "probes.module_budget_samples=128",
    "probes.joint_budget_bounds=[64, 128]",
    "train.batch_size=4",
    "train.learning_rate=0.01",
    "train.warmup_samples=0",
    "train.eval_every=8",
    "train.val_subset=16",
    "train.eval_batch_size=8",
    "final.budget=epochs",
    "final.epochs=0.5",
    "search.bootstrap=10",
    "runtime.retry_delay_seconds=0",
]


def _digits() -> list[tuple[Image.Image, int]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = []
    for pixels, label in zip(digits.images[:EXAMPLES], digits.target[:EXAMPLES]):
        image = Image.fromarray((pixels * 255 / 16).astype("uint8"), mode="L").resize((24, 24)).convert("RGB")
        out.append((image, int(label)))
    return out


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_llava_json(folder: Path) -> list[str]:
    """Two-turn conversations with the ``<image>`` placeholder; images in a sub-folder."""
    (folder / "images").mkdir(parents=True)
    records = []
    for index, (image, label) in enumerate(_digits()):
        name = f"images/{index:03d}.png"
        image.save(folder / name)
        records.append({
            "id": f"{index:03d}", "image": name,
            "conversations": [
                {"from": "human", "value": "<image>\nwhat digit is this ?"},
                {"from": "gpt", "value": NAMES[label]},
                {"from": "human", "value": "is it odd or even ?"},
                {"from": "gpt", "value": "odd" if label % 2 else "even"},
            ],
        })
    (folder / "data.json").write_text(json.dumps(records))
    return ["data.source=llava_json", f"data.path={folder / 'data.json'}"]


def write_vqa_parquet(folder: Path) -> list[str]:
    """Image bytes with question and answer columns under other names, mapped by ``data.columns``."""
    digits = _digits()
    table = pa.table({
        "picture": [_png(image) for image, _ in digits],
        "query": ["what digit is this ?"] * len(digits),
        "label": [NAMES[label] for _, label in digits],
    })
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "data.parquet")
    return ["data.source=parquet", f"data.path={folder / 'data.parquet'}",
            "data.columns={image: picture, question: query, answer: label}"]


def write_scienceqa_parquet(folder: Path) -> list[str]:
    """The ScienceQA layout: question, choices, answer index and hint, with image paths in the image column."""
    (folder / "images").mkdir(parents=True)
    rows = {"image": [], "question": [], "choices": [], "answer": [], "hint": []}
    for index, (image, label) in enumerate(_digits()):
        image.save(folder / "images" / f"{index:03d}.png")
        choices = [NAMES[label], NAMES[(label + 3) % 10], NAMES[(label + 6) % 10]]
        rows["image"].append(f"images/{index:03d}.png")
        rows["question"].append("what digit is this ?")
        rows["choices"].append(choices[index % 3:] + choices[:index % 3])
        rows["answer"].append((3 - index % 3) % 3)
        rows["hint"].append("the image is a digit" if index % 2 else "")
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), folder / "train.parquet")
    return ["data.source=parquet", f"data.path={folder / 'train.parquet'}", f"data.image_folder={folder}"]


def write_hf_disk(folder: Path) -> list[str]:
    """A ``DatasetDict`` with train, validation and test splits, saved with ``save_to_disk``."""
    datasets = pytest.importorskip("datasets")
    digits = _digits()
    features = datasets.Features(
        {"image": datasets.Image(), "question": datasets.Value("string"), "answer": datasets.Value("string")}
    )

    def part(start: int, stop: int):
        return datasets.Dataset.from_dict({
            "image": [{"bytes": _png(image), "path": None} for image, _ in digits[start:stop]],
            "question": ["what digit is this ?"] * (stop - start),
            "answer": [NAMES[label] for _, label in digits[start:stop]],
        }, features=features)

    splits = {"train": part(0, 44), "validation": part(44, 52), "test": part(52, EXAMPLES)}
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    return ["data.source=hf_disk", f"data.path={folder}"]


WRITERS = {"llava_json": write_llava_json, "parquet": write_vqa_parquet, "scienceqa": write_scienceqa_parquet,
           HF_DISK: write_hf_disk}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One work directory for every case: MLflow and Prefect start once, each run has its own name."""
    return tmp_path_factory.mktemp("family-runs")


@pytest.mark.parametrize(("family", "data_format"), family_params(CASES))
def test_mars_run_family_format(family, data_format, workdir, tmp_path, capsys):
    model_folder = tmp_path / "model"
    error = save_family(family, model_folder)
    assert error is None, f"the {family} processor cannot be built: {error}"
    data_args = WRITERS[data_format](tmp_path / "data")
    run_name = f"{family}-{data_format}"

    code = main(["run", "--workdir", str(workdir), "--run-name", run_name, "--no-progress",
                 f"model.name_or_path={model_folder}", *TINY, *data_args])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-4000:]
    out = captured.out

    summary = json.loads((workdir / "runs" / run_name / "summary.json").read_text())
    assert summary["probes"]["failed"] == 0
    assert summary["probes"]["trained"] == summary["probes"]["total"] == 14
    assert summary["chosen"]["vision"] in (2, 4, 8)
    assert summary["chosen"]["llm"] in (2, 4, 8)
    assert math.isfinite(summary["final"]["test_loss"])
    assert 0.0 <= summary["final"]["test_accuracy"] <= 1.0
    assert f"chosen ranks        vision {summary['chosen']['vision']}, llm {summary['chosen']['llm']}" in out

    # The adapter on disk carries the chosen rank on every layer of each module.
    from peft import PeftConfig

    adapter = PeftConfig.from_pretrained(Path(summary["paths"]["run_dir"]) / "adapter")
    from transformers import AutoModelForImageTextToText

    targets = split_model(AutoModelForImageTextToText.from_pretrained(model_folder))
    ranks = {pattern.replace("\\", ""): rank for pattern, rank in adapter.rank_pattern.items()}
    for module in ("vision", "llm"):
        layers = targets[module].linear_layers
        assert layers
        assert {ranks[layer] for layer in layers} == {summary["chosen"][module]}, module
