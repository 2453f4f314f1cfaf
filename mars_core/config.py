"""The one typed configuration of a MARS search.

Every option is declared here with its default and a one-line description,
and validated in one place. The defaults are the embedded demo: a small
LLaVA-style model built and pretrained locally, fine-tuned on a visual
question answering task made from scikit-learn's handwritten digits.

Ranks are stored per module (``{"vision": 8, "llm": 16}``) rather than as a
fixed pair, so a third module (an audio encoder, say) is a configuration
change, not a code change.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    source: Literal["demo_digits", "llava_json", "parquet", "hf_disk"] = Field(
        "demo_digits", description="Dataset format. `demo_digits` builds the embedded digits VQA task."
    )
    path: str | None = Field(None, description="Dataset file or folder (not used by `demo_digits`).")
    image_folder: str | None = Field(None, description="Folder that image paths in the dataset are relative to.")
    on_bad_rows: Literal["error", "skip"] = Field(
        "error", description="What to do with a row whose image or answer is unusable: stop, or skip and count it."
    )
    seed: int = Field(0, ge=0, description="Seed for splitting and for the demo's image transforms.")
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="Share of examples held out for validation.")
    test_fraction: float = Field(0.15, gt=0, lt=0.5, description="Share of examples held out for testing.")
    max_train_examples: int | None = Field(
        None, ge=1, description="Cap on the training split (Dstar); None keeps every example."
    )
    layout: Literal["auto", "vqa", "scienceqa"] = Field(
        "auto",
        description=(
            "Row layout of `parquet` and `hf_disk` sources: `vqa` has question and answer columns; `scienceqa` "
            "has question, choices, an answer index and an optional hint, turned into a multiple-choice prompt "
            "whose answer is the option text; `auto` picks `scienceqa` when a choices column exists."
        ),
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Column names of `parquet` and `hf_disk` sources, by role, where they differ from the role name: "
            "roles are id, image, question, answer, question_type, choices, hint "
            "(e.g. {question: query, answer: label})."
        ),
    )
    demo_questions_per_image: int = Field(
        2, ge=1, le=4, description="Questions of distinct types asked about each image of the `demo_digits` task."
    )

    @field_validator("columns")
    @classmethod
    def _known_column_roles(cls, columns: dict[str, str]) -> dict[str, str]:
        roles = ("id", "image", "question", "answer", "question_type", "choices", "hint")
        unknown = sorted(set(columns) - set(roles))
        if unknown:
            raise ValueError(f"data.columns has unknown role(s) {unknown}; allowed roles are {list(roles)}")
        empty = sorted(role for role, name in columns.items() if not name.strip())
        if empty:
            raise ValueError(f"data.columns gives an empty column name for role(s) {empty}")
        return columns


class ModelConfig(_Section):
    name_or_path: str = Field(
        "demo", description="`demo` builds the embedded base model; otherwise a local path or a hub id."
    )
    revision: str | None = Field(None, description="Hub revision (commit, tag or branch) to pin.")
    trust_remote_code: bool = Field(False, description="Allow code shipped with the model to run.")
    dtype: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Weight and compute dtype.")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="Where training runs; `auto` picks cuda when present.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    module_patterns: dict[str, str] = Field(
        default_factory=dict,
        description="Override module discovery: module name -> regex over parameter names (e.g. vision: '^model\\.vision_tower\\.').",
    )


class LoraSettings(_Section):
    modules: list[str] = Field(
        default_factory=lambda: ["vision", "llm"], description="Modules that get their own LoRA rank."
    )
    alpha_ratio: float = Field(2.0, gt=0, description="lora_alpha = alpha_ratio * rank (constant scale across ranks).")
    use_rslora: bool = Field(False, description="Use rank-stabilised LoRA scaling (alpha / sqrt(r)).")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    projector: Literal["train", "freeze", "lora"] = Field(
        "train", description="How the projector between vision encoder and language model is tuned."
    )
    projector_rank: int = Field(8, ge=1, description="LoRA rank of the projector when `projector: lora`.")

    @field_validator("modules")
    @classmethod
    def _modules_nonempty(cls, modules: list[str]) -> list[str]:
        if not modules:
            raise ValueError("lora.modules is empty: name at least one module, e.g. [vision, llm]")
        if len(set(modules)) != len(modules):
            raise ValueError(f"lora.modules has duplicates: {modules}")
        return modules


class TrainSettings(_Section):
    """Shared by every probe and the final run: only ranks and data size vary within a search."""

    learning_rate: float = Field(1e-3, gt=0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(16, ge=1, description="Global batch size (examples per optimizer step).")
    warmup_samples: int = Field(128, ge=0, description="Linear warm-up length, in samples.")
    grad_clip: float = Field(1.0, gt=0, description="Max gradient norm.")
    seed: int = Field(0, description="Seed for initialisation, shuffling and dropout.")
    eval_every: int = Field(128, ge=1, description="Evaluate validation loss every this many samples.")
    val_subset: int = Field(256, ge=1, description="Fixed number of validation examples used for loss curves.")
    eval_batch_size: int = Field(64, ge=1, description="Examples per forward pass when measuring loss or generating answers.")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads per run; None divides the cores among parallel probes.")


class ProbeSettings(_Section):
    min_rank: int = Field(2, ge=1, description="Smallest rank in the grid (power of two).")
    max_rank: int = Field(128, ge=1, description="Largest rank in the grid (power of two).")
    ranks_per_module: int = Field(4, ge=2, description="Module probes per module and data size, spread over the grid.")
    data_fractions: tuple[float, float] = Field(
        (0.25, 0.5), description="D1 and D2 as fractions of the training split."
    )
    module_budget_samples: int = Field(
        2048, ge=1, description="Samples each module probe trains for (constant LR after warm-up)."
    )
    joint_probes: int = Field(
        8, ge=2, description="Joint probes: grid corners plus a Latin-hypercube fill; Law-P needs at least 2 x modules + 2."
    )
    joint_budget_margin: float = Field(0.5, ge=0, description="Joint probe budget = (1 + margin) * Law-T convergence time at D2.")
    joint_budget_bounds: tuple[int, int] = Field(
        (512, 8192), description="Lower and upper bound on the joint probe budget, in samples."
    )

    @model_validator(mode="after")
    def _check_grid(self) -> "ProbeSettings":
        for name in ("min_rank", "max_rank"):
            value = getattr(self, name)
            if value & (value - 1):
                raise ValueError(f"probes.{name}={value} is not a power of two; use one such as 8, 64 or 128")
        if self.min_rank > self.max_rank:
            raise ValueError(f"probes.min_rank={self.min_rank} is above probes.max_rank={self.max_rank}")
        d1, d2 = self.data_fractions
        if not 0 < d1 < d2 <= 1:
            raise ValueError(f"probes.data_fractions={self.data_fractions} must satisfy 0 < D1 < D2 <= 1")
        lo, hi = self.joint_budget_bounds
        if not 0 < lo <= hi:
            raise ValueError(f"probes.joint_budget_bounds={self.joint_budget_bounds} must satisfy 0 < low <= high")
        return self

    def grid(self) -> list[int]:
        """Candidate ranks: powers of two from min_rank to max_rank."""
        ranks, r = [], self.min_rank
        while r <= self.max_rank:
            ranks.append(r)
            r *= 2
        return ranks


class SearchSettings(_Section):
    delta: float = Field(0.05, gt=0, lt=1, description="Convergence = reaching 1 - delta of the achievable improvement.")
    tolerance: float = Field(0.25, ge=0, description="Pairs are aligned when module convergence times differ by at most this ratio.")
    default_ranks: dict[str, int] = Field(
        default_factory=lambda: {"vision": 8, "llm": 8},
        description="Fallback ranks when no candidate survives pruning.",
    )
    max_trainable_params: int | None = Field(None, ge=1, description="Drop candidates above this trainable parameter count.")
    law_p_form: Literal["auto", "base", "capacity"] = Field(
        "auto", description="Law-P form; `auto` takes the capacity form only with >= 10 joint probes and a lower LOO error."
    )
    bootstrap: int = Field(200, ge=0, description="Bootstrap resamples for law parameter intervals and prediction errors.")
    seed: int = Field(0, description="Seed for the joint design and the bootstrap.")


class FinalSettings(_Section):
    budget: Literal["auto", "epochs"] = Field(
        "auto", description="`auto` trains (1 + margin) * max module convergence time at Dstar; `epochs` trains `epochs` passes."
    )
    epochs: float = Field(3.0, gt=0, description="Passes over the training split when budget is `epochs`.")
    margin: float = Field(0.5, ge=0, description="Extra share of samples on top of the predicted convergence time.")
    min_samples: int = Field(
        4096, ge=1,
        description="Lower bound on the automatic budget, in samples; a final run shorter than the joint probes ends above the loss Law-P predicts for them.",
    )
    max_samples: int = Field(16384, ge=1, description="Upper bound on the automatic budget, in samples.")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="Learning-rate schedule after warm-up.")
    checkpoint_every: int = Field(1024, ge=1, description="Write a resumable checkpoint every this many samples.")


class RuntimeSettings(_Section):
    workdir: str = Field("mars-work", description="Folder for datasets, models, caches, MLflow and Prefect state.")
    probe_parallelism: int = Field(2, ge=1, description="Probes trained at the same time.")
    retries: int = Field(1, ge=0, description="Retries for probe and training tasks.")
    retry_delay_seconds: float = Field(1.0, ge=0, description="Wait between retries.")
    runner: Literal["local", "dask"] = Field(
        "local",
        description=(
            "Where probes train: `local` is a thread pool in the flow's process; `dask` sends each probe to a "
            "worker of a Dask cluster (needs the `team` extra)."
        ),
    )
    dask_address: str | None = Field(
        None,
        description=(
            "Scheduler of an existing Dask cluster for `runner: dask`, e.g. tcp://10.0.0.5:8786; None starts a "
            "temporary local cluster with one single-threaded worker per parallel probe."
        ),
    )

    @model_validator(mode="after")
    def _check_runner(self) -> "RuntimeSettings":
        if self.dask_address is None:
            return self
        if self.runner != "dask":
            raise ValueError(
                f"runtime.dask_address={self.dask_address!r} is set but runtime.runner is {self.runner!r}; "
                "set runtime.runner=dask to use the cluster, or remove the address"
            )
        if not self.dask_address.strip() or any(c.isspace() for c in self.dask_address):
            raise ValueError(
                f"runtime.dask_address={self.dask_address!r} is not a scheduler address; "
                "give one like tcp://host:8786"
            )
        return self


class TrackingSettings(_Section):
    experiment: str = Field("mars", description="MLflow experiment name.")
    run_name: str | None = Field(None, description="Run name; None derives one from the configuration hash.")


class MarsConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    probes: ProbeSettings = Field(default_factory=ProbeSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    final: FinalSettings = Field(default_factory=FinalSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)

    @model_validator(mode="after")
    def _check_modules(self) -> "MarsConfig":
        missing = [m for m in self.lora.modules if m not in self.search.default_ranks]
        if missing:
            raise ValueError(
                f"search.default_ranks has no rank for module(s) {missing}; give one per entry of lora.modules"
            )
        from mars_core.search.law_p import min_joint_probes  # the laws live in the search package

        needed = min_joint_probes(self.search.law_p_form, self.lora.modules)
        if self.probes.joint_probes < needed:
            raise ValueError(
                f"probes.joint_probes={self.probes.joint_probes} is too few: Law-P form {self.search.law_p_form!r} "
                f"for modules {self.lora.modules} needs at least {needed} joint probes to fit; "
                f"set probes.joint_probes={needed} or more"
            )
        pairs = len(self.probes.grid()) ** len(self.lora.modules)
        if pairs < needed:
            raise ValueError(
                f"the rank grid probes.min_rank={self.probes.min_rank} to probes.max_rank={self.probes.max_rank} "
                f"gives {pairs} distinct joint probes, but Law-P needs at least {needed}; widen the grid"
            )
        return self

    def digest(self, *sections: str) -> str:
        """Hash of the named sections (all when none), for cache keys."""
        data = self.model_dump(mode="json")
        if sections:
            data = {name: data[name] for name in sections}
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> MarsConfig:
    """Build a configuration from an optional YAML file and ``section.key=value`` overrides.

    Override values are parsed as YAML, so ``probes.data_fractions=[0.2,0.4]``
    and ``search.max_trainable_params=null`` work.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"configuration file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of sections at the top level, got {type(loaded).__name__}")
        data = loaded
    for item in overrides or []:
        _apply_override(data, item)
    return MarsConfig.model_validate(data)


def _apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ValueError(f"invalid override {item!r}: expected section.key=value, e.g. probes.max_rank=64")
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"invalid override {item!r}: {part} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def describe_defaults() -> str:
    """Render every option with its default and description, as YAML with comments."""
    lines = ["# MARS configuration: every option with its default."]
    defaults = MarsConfig()
    for section_name, section_field in MarsConfig.model_fields.items():
        section = getattr(defaults, section_name)
        lines.append(f"{section_name}:")
        for name, field in type(section).model_fields.items():
            value = json.dumps(getattr(section, name) if not isinstance(getattr(section, name), tuple) else list(getattr(section, name)))
            lines.append(f"  # {field.description}")
            lines.append(f"  {name}: {value}")
    return "\n".join(lines) + "\n"
