"""Locate or build the base model, fingerprint it, and load it for a run."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mars_core.config import ModelConfig

log = logging.getLogger(__name__)

# Files whose bytes define a local model for its fingerprint.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_CONFIG_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
                 "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json")


@dataclass(frozen=True)
class BaseModelInfo:
    """A base model folder that ``from_pretrained`` can load, and a fingerprint of its content."""

    path: str
    fingerprint: str
    name: str


def prepare_base_model(cfg: ModelConfig, cache_root: Path, progress: bool = False, recipe=None,
                       check_processor: bool = True) -> BaseModelInfo:
    """Build (``demo``) or locate the base model.

    ``name_or_path == "demo"`` builds, pretrains and caches the embedded demo
    model under ``cache_root`` (``recipe`` replaces the default
    ``DemoRecipe``, e.g. a shorter one for tests). A local folder is used as
    it is, fingerprinted from its configuration and weight files.

    Raises ``FileNotFoundError`` for a path that does not exist, and
    ``ProcessorLoadError`` when ``check_processor`` is set and the folder's
    processor cannot be built here.
    """
    if cfg.name_or_path == "demo":
        from mars_core.model.demo import build_demo_model

        path, key = build_demo_model(Path(cache_root), recipe=recipe, progress=progress)
        return BaseModelInfo(path=str(path), fingerprint=key, name="demo")

    path = _local_folder(cfg)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} has no config.json, so it is not a transformers model folder; pass the folder that "
            "save_pretrained wrote"
        )
    log.info("base model: fingerprinting %s", path)
    fingerprint = fingerprint_folder(path)
    if check_processor:
        load_processor(cfg, path)  # A broken processor fails here once, not in every probe.
    log.info("base model: %s, fingerprint %s", path, fingerprint[:16])
    return BaseModelInfo(path=str(path.resolve()), fingerprint=fingerprint, name=path.name)


def _local_folder(cfg: ModelConfig) -> Path:
    """Return the local folder of ``model.name_or_path``: the path itself, or the Hub snapshot it names."""
    path = Path(cfg.name_or_path).expanduser()
    if path.exists():
        return path
    if cfg.name_or_path.startswith((".", "/", "~")) or cfg.name_or_path.count("/") != 1:
        raise FileNotFoundError(
            f"model.name_or_path={cfg.name_or_path!r} is not an existing folder, nor a Hub id of the form "
            "owner/name; pass the folder that save_pretrained wrote, a Hub id, or `demo`"
        )

    from huggingface_hub import snapshot_download

    if cfg.revision is None:
        log.warning("model.name_or_path=%s has no model.revision: the search is not reproducible if the "
                    "repository changes; pin a commit, e.g. model.revision=<40-hex commit>", cfg.name_or_path)
    log.info("base model: fetching %s at revision %s from the Hugging Face Hub", cfg.name_or_path,
             cfg.revision or "main")
    try:
        folder = snapshot_download(repo_id=cfg.name_or_path, revision=cfg.revision)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"model.name_or_path={cfg.name_or_path!r} (revision {cfg.revision or 'main'}) is not a local folder "
            f"and could not be fetched from the Hugging Face Hub: {type(exc).__name__}: {exc}. Without network "
            "access, download the model elsewhere (`hf download`) and pass its local folder"
        ) from exc
    return Path(folder)


def fingerprint_folder(path: Path) -> str:
    """sha256 over the configuration files and the weight files of a model folder, by name and content."""
    sha = hashlib.sha256()
    files = sorted(
        p for p in path.rglob("*")
        if p.is_file() and (p.name in _CONFIG_FILES or p.suffix in _WEIGHT_SUFFIXES or p.name.endswith(".index.json"))
    )
    for file in files:
        sha.update(f"{file.relative_to(path).as_posix()}|{file.stat().st_size}|".encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
    return sha.hexdigest()


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(cfg: ModelConfig) -> torch.device:
    """Return the device runs use: ``auto`` takes CUDA when it is available."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device=cuda but torch sees no CUDA device; set model.device=cpu or auto")
    return torch.device(cfg.device)


def load_base_model(cfg: ModelConfig, base: BaseModelInfo) -> tuple[nn.Module, object]:
    """Load the model and its processor from the base folder, on the configured device and dtype."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(
        base.path, dtype=_DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code
    )
    processor = load_processor(cfg, Path(base.path))
    model.to(resolve_device(cfg))
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing back-propagates into LoRA layers even
        # though the frozen embeddings give inputs without requires_grad.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model, processor


class ProcessorLoadError(RuntimeError):
    """Error raised when a model folder's processor cannot be built in this environment."""


def load_processor(cfg: ModelConfig, path: Path):
    """Load the processor of a model folder; raise ProcessorLoadError naming the package to install."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - re-raised with the cause and a fix
        cause = f"{type(exc).__name__}: {' '.join(str(exc).split())}".rstrip(".")
        model_type = _model_type(path)
        message = f"cannot load the processor of {path} (model type {model_type}): {cause}"
        problem = torchvision_problem()
        if problem is not None and (model_type in TORCHVISION_FAMILIES or "torchvision" in cause.lower()):
            message += (
                f". The processors of several families ({', '.join(TORCHVISION_FAMILIES)}) need torchvision, "
                f"and here {problem}. Install a torch and torchvision pair built together, best in a second "
                "environment so that this one keeps its torch: on a CPU-only x86_64 machine "
                "`pip install torch==2.14.1 torchvision==0.29.1` (a CUDA build of about 5.5 GB that also runs on "
                "the CPU), on aarch64 `pip install torch==2.9.1 torchvision==0.24.1`, on a GPU machine the "
                "torchvision release that matches your torch. The README section \"Models whose processor needs "
                "torchvision\" gives the commands."
            )
        raise ProcessorLoadError(message) from exc


# Families whose processor, in transformers 5, builds a video processor or
# needs torchvision itself: loading them without torchvision fails.
TORCHVISION_FAMILIES = ("llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "smolvlm", "internvl", "mistral3")


def _model_type(path: Path) -> str:
    try:
        return str(json.loads((path / "config.json").read_text()).get("model_type", "unknown"))
    except (OSError, ValueError):
        return "unknown"


def torchvision_problem() -> str | None:
    """Return why torchvision cannot be used here, or None when it imports."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        return "torchvision is not installed"
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a torchvision built for another torch fails in many ways
        return f"torchvision does not import ({type(exc).__name__}: {exc}), usually because it was built for another torch"
    return None


def meta_model(cfg: ModelConfig, base: BaseModelInfo) -> nn.Module:
    """Build the base model's module tree on the meta device: shapes without weights, for counting."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(base.path, trust_remote_code=cfg.trust_remote_code)
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config, trust_remote_code=cfg.trust_remote_code)


def read_demo_metadata(base: BaseModelInfo) -> dict | None:
    """Read the demo's ``mars_demo.json`` (recipe and pretraining numbers); return None for other models."""
    path = Path(base.path) / "mars_demo.json"
    return json.loads(path.read_text()) if path.is_file() else None
