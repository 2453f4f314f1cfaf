"""One training routine for probes and final runs.

A run loads the base model, adds LoRA per module (``RunSpec.ranks``), and
trains with AdamW on the answer-only loss: warm-up, then a constant rate
for probes or ``final.schedule`` for final runs, with gradient clipping.
The validation loss on a fixed subset of the validation split is measured
before training and then every ``train.eval_every`` samples. The search
fits convergence times to that curve.

Final runs checkpoint every ``final.checkpoint_every`` samples and resume
from ``<out_dir>/checkpoint`` when it exists; the adapter goes to
``<out_dir>/adapter`` in the standard PEFT format. A non-finite loss or
gradient norm stops the run with ``status = "failed"`` before the
optimizer applies it, and no adapter is written.

Runs keep no state between calls, so two runs may train at once in two
threads of one process. The only process-wide setting a run changes is
torch's thread count, and only when ``threads`` is given.

Limits: LoRA dropout draws from torch's global generator, so with
``lora.dropout > 0`` two runs in parallel threads are not reproducible.
An AdaLoRA run that resumes from a checkpoint starts its singular-value
importance scores over, so it does not prune exactly as an uninterrupted
run would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mars_core.config import MarsConfig
from mars_core.model.base import BaseModelInfo, load_base_model
from mars_core.model.lora import (
    ADALORA_ORTH_REG_WEIGHT,
    LoraPlan,
    adalora_orthogonality_penalty,
    apply_lora,
    module_of_parameter,
    trainable_parameters,
)
from mars_core.model.prompting import EncodedExample, answer_loss_sum, collate, model_inputs
from mars_core.train.batches import SampleStream, encode_vqa, subset_indices
from mars_core.train.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from mars_core.train.evaluation import model_device, model_dtype, validation_loss
from mars_core.train.schedule import WarmupSchedule
from mars_core.train.spec import RunSpec, TrainHooks, TrainResult, validate_spec

log = logging.getLogger(__name__)


class NonFiniteLoss(Exception):
    """A loss or gradient norm became NaN or infinite. The message names the step and the samples seen."""


@dataclass
class _Session:
    """The model, optimizer, data and progress of one run while it trains."""

    model: torch.nn.Module
    processor: object
    plan: LoraPlan
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    params: list[torch.nn.Parameter]
    train_examples: list[EncodedExample]
    val_examples: list[EncodedExample]
    stream: SampleStream
    pad_token_id: int
    trainable_params: int
    curve: list[tuple[int, float]] = field(default_factory=list)
    samples_seen: int = 0
    steps: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    previous_seconds: float = 0.0
    started_at: float = field(default_factory=time.perf_counter)


def train_run(
    cfg: MarsConfig,
    base: BaseModelInfo,
    dataset,
    spec: RunSpec,
    out_dir: Path | None,
    threads: int | None = None,
    progress: bool = False,
    hooks: TrainHooks | None = None,
) -> TrainResult:
    """Fine-tune ``base`` with LoRA ranks ``spec.ranks`` and return its validation-loss curve.

    Probes may pass ``out_dir=None`` (nothing is saved). Final runs need an
    ``out_dir``: they save the adapter to ``out_dir/adapter``, checkpoint to
    ``out_dir/checkpoint``, and resume from that checkpoint when one exists.

    Raises ``ValueError`` for invalid input (ranks, sizes, learning-rate
    scales, a checkpoint from a different run) before any training.
    """
    started = time.perf_counter()
    if threads is not None:
        torch.set_num_threads(threads)
    spec = validate_spec(cfg, spec, dataset.n_train)
    if spec.kind == "final" and out_dir is None:
        raise ValueError("a final run needs an out_dir for its adapter and checkpoints")
    out_dir = Path(out_dir) if out_dir is not None else None
    log.info(
        "train run (%s): ranks %s, n_train %d, budget %d samples", spec.kind, spec.ranks, spec.n_train, spec.budget_samples
    )

    session = _setup(cfg, base, dataset, spec)
    session.started_at = started
    if spec.kind == "final" and session.plan.config is None:
        raise ValueError(
            f"ranks {spec.ranks} give no LoRA layer, so there is no PEFT adapter to save; "
            "a final run needs at least one module with rank >= 1"
        )
    run_key = _run_key(cfg, base, dataset, spec)
    resumed_from = None
    if spec.kind == "final":
        resumed_from = _resume(session, out_dir, run_key)

    try:
        _train(cfg, spec, session, out_dir, run_key, progress, hooks)
    except NonFiniteLoss as exc:
        log.warning("train run (%s) failed: %s; no adapter written", spec.kind, exc)
        return _result(session, "failed", str(exc), None, resumed_from)

    adapter_dir = None
    if spec.kind == "final":
        adapter_dir = _save_adapter(session.model, out_dir)
    result = _result(session, "ok", None, adapter_dir, resumed_from)
    log.info(
        "train run (%s) done: ranks %s, %d samples, val loss %.4f -> %.4f, %d trainable params, %.1f s",
        spec.kind, spec.ranks, result.samples_seen, result.curve[0][1], result.final_val_loss,
        result.trainable_params, result.wall_seconds,
    )
    return result


def _setup(cfg: MarsConfig, base: BaseModelInfo, dataset, spec: RunSpec) -> _Session:
    from mars_core.data import load_split

    model, processor = load_base_model(cfg.model, base)
    total_steps = math.ceil(spec.budget_samples / cfg.train.batch_size)
    model, plan = apply_lora(model, cfg, spec.ranks, seed=cfg.train.seed, adapter=spec.adapter, total_steps=total_steps)
    model.train()

    # Data after the model: encoding needs the processor that comes with it.
    train_split = load_split(dataset.path, "train")
    chosen = subset_indices(len(train_split), spec.n_train, cfg.train.seed)
    train_examples = encode_vqa(processor, [train_split[i] for i in chosen])
    val_split = load_split(dataset.path, "validation")
    if len(val_split) == 0:
        raise ValueError(f"the validation split of {dataset.path} is empty; loss curves need validation examples")
    val_examples = encode_vqa(processor, val_split[: min(cfg.train.val_subset, len(val_split))])

    named = trainable_parameters(model)
    optimizer = _optimizer(cfg, spec, plan, named)
    warmup_steps = math.ceil(cfg.train.warmup_samples / cfg.train.batch_size)
    kind = "constant" if spec.kind == "probe" else cfg.final.schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupSchedule(warmup_steps, total_steps, kind))

    return _Session(
        model=model,
        processor=processor,
        plan=plan,
        optimizer=optimizer,
        scheduler=scheduler,
        params=[param for _, param in named],
        train_examples=train_examples,
        val_examples=val_examples,
        stream=SampleStream(spec.n_train, cfg.train.seed),
        pad_token_id=processor.tokenizer.pad_token_id,
        trainable_params=sum(param.numel() for _, param in named),
    )


def _optimizer(cfg: MarsConfig, spec: RunSpec, plan: LoraPlan, named) -> torch.optim.AdamW:
    scales = spec.lr_scale or {}
    groups: dict[str, list[torch.nn.Parameter]] = {}
    for name, param in named:
        groups.setdefault(module_of_parameter(name, plan), []).append(param)
    param_groups = [
        {"params": params, "lr": cfg.train.learning_rate * scales.get(module, 1.0), "name": module}
        for module, params in sorted(groups.items())
    ]
    return torch.optim.AdamW(param_groups, lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)


def _train(
    cfg: MarsConfig,
    spec: RunSpec,
    session: _Session,
    out_dir: Path | None,
    run_key: str,
    progress: bool,
    hooks: TrainHooks | None,
) -> None:
    batch_size, eval_every = cfg.train.batch_size, cfg.train.eval_every
    checkpoint_every = cfg.final.checkpoint_every
    device, dtype = model_device(session.model), model_dtype(session.model)
    after_step = hooks.after_step if hooks is not None else None

    if not session.curve:
        _evaluate(session, cfg)

    bar = tqdm(total=spec.budget_samples, initial=session.samples_seen, desc=f"{spec.kind} {spec.ranks}",
               unit="sample", disable=not progress)
    with bar:
        while session.samples_seen < spec.budget_samples:
            step_started = time.perf_counter()
            size = min(batch_size, spec.budget_samples - session.samples_seen)
            positions = session.stream.positions(session.samples_seen, size)
            batch = collate([session.train_examples[p] for p in positions], session.pad_token_id)

            logits = session.model(**model_inputs(batch, device, dtype)).logits
            loss_sum, n_tokens = answer_loss_sum(logits, batch["labels"])
            loss = loss_sum / max(n_tokens, 1)
            if spec.adapter == "adalora":
                loss = loss + ADALORA_ORTH_REG_WEIGHT * adalora_orthogonality_penalty(session.model)
            loss.backward()

            grad_norm = torch.nn.utils.clip_grad_norm_(session.params, cfg.train.grad_clip)
            # Check before the update, so a poisoned step never reaches the weights.
            _check_finite(loss, grad_norm, session)
            session.optimizer.step()
            session.scheduler.step()
            if spec.adapter == "adalora":
                # AdaLoRA scores its singular values from this step's gradients, so before zero_grad.
                session.model.base_model.update_and_allocate(session.steps)
            session.optimizer.zero_grad(set_to_none=True)

            previous = session.samples_seen
            session.samples_seen += size
            session.steps += 1
            session.train_seconds += time.perf_counter() - step_started
            bar.update(size)

            if after_step is not None:
                after_step(session.samples_seen, session.model)
            finished = session.samples_seen >= spec.budget_samples
            if finished or session.samples_seen // eval_every > previous // eval_every:
                _evaluate(session, cfg)
            if spec.kind == "final" and (finished or session.samples_seen // checkpoint_every > previous // checkpoint_every):
                _checkpoint(session, out_dir, run_key)


def _check_finite(loss: torch.Tensor, grad_norm: torch.Tensor, session: _Session) -> None:
    values = torch.stack([loss.detach().float(), grad_norm.detach().float().to(loss.device)])
    if bool(torch.isfinite(values).all()):
        return
    loss_value, norm_value = values.tolist()
    session.optimizer.zero_grad(set_to_none=True)
    what = "training loss" if not math.isfinite(loss_value) else "gradient norm"
    raise NonFiniteLoss(
        f"non-finite {what} (loss {loss_value}, gradient norm {norm_value}) at step {session.steps + 1}, "
        f"after {session.samples_seen} samples; lower train.learning_rate or check the data"
    )


def _evaluate(session: _Session, cfg: MarsConfig) -> None:
    started = time.perf_counter()
    value = validation_loss(session.model, session.val_examples, session.pad_token_id, cfg.train.eval_batch_size)
    session.eval_seconds += time.perf_counter() - started
    if not math.isfinite(value):
        raise NonFiniteLoss(f"non-finite validation loss ({value}) after {session.samples_seen} samples")
    session.curve.append((session.samples_seen, value))


def _run_key(cfg: MarsConfig, base: BaseModelInfo, dataset, spec: RunSpec) -> str:
    """Hash of everything that decides a final run's weights, to refuse resuming a different run."""
    settings = cfg.model_dump(mode="json", include={"lora", "train", "final", "model"})
    settings["train"].pop("torch_threads", None)
    settings["model"].pop("device", None)
    blob = {
        "spec": {"ranks": spec.ranks, "n_train": spec.n_train, "budget": spec.budget_samples, "kind": spec.kind,
                 "lr_scale": spec.lr_scale, "adapter": spec.adapter},
        "settings": settings,
        "dataset": dataset.fingerprint,
        "base": base.fingerprint,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def _checkpoint(session: _Session, out_dir: Path, run_key: str) -> None:
    trainable = {name: param.detach().cpu().clone() for name, param in trainable_parameters(session.model)}
    state = {
        "run_key": run_key,
        "samples_seen": session.samples_seen,
        "steps": session.steps,
        "curve": list(session.curve),
        "trainable": trainable,
        "optimizer": session.optimizer.state_dict(),
        "scheduler": session.scheduler.state_dict(),
        "rng": capture_rng(),
        "train_seconds": session.train_seconds,
        "eval_seconds": session.eval_seconds,
        "wall_seconds": session.previous_seconds + time.perf_counter() - session.started_at,
    }
    save_checkpoint(out_dir, state)


def _resume(session: _Session, out_dir: Path, run_key: str) -> int | None:
    state = load_checkpoint(out_dir)
    if state is None:
        return None
    if state.get("run_key") != run_key:
        raise ValueError(
            f"{out_dir}/checkpoint belongs to a different run (other ranks, budget, data, base model or "
            "settings); delete that folder to start over, or give this run its own out_dir"
        )
    named = dict(trainable_parameters(session.model))
    missing = sorted(set(named) ^ set(state["trainable"]))
    if missing:
        raise ValueError(f"{out_dir}/checkpoint does not match the model's trainable parameters (e.g. {missing[:3]})")
    with torch.no_grad():
        for name, param in named.items():
            param.copy_(state["trainable"][name].to(param.device, param.dtype))
    session.optimizer.load_state_dict(state["optimizer"])
    session.scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"])
    session.samples_seen = state["samples_seen"]
    session.steps = state["steps"]
    session.curve = [tuple(point) for point in state["curve"]]
    session.train_seconds = state["train_seconds"]
    session.eval_seconds = state["eval_seconds"]
    session.previous_seconds = state["wall_seconds"]
    log.info("train run (final): resuming from %s/checkpoint at %d samples", out_dir, session.samples_seen)
    return session.samples_seen


def _save_adapter(model, out_dir: Path) -> str:
    """Save the PEFT adapter to ``out_dir/adapter`` via a temporary folder and a rename."""
    target = out_dir / "adapter"
    staging = out_dir / f".tmp-adapter-{uuid.uuid4().hex[:8]}"
    model.save_pretrained(staging)
    if target.exists():
        retired = out_dir / f".old-adapter-{uuid.uuid4().hex[:8]}"
        os.rename(target, retired)
        os.rename(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, target)
    return str(target)


def _result(
    session: _Session, status: str, reason: str | None, adapter_dir: str | None, resumed_from: int | None
) -> TrainResult:
    return TrainResult(
        status=status,
        reason=reason,
        curve=list(session.curve),
        samples_seen=session.samples_seen,
        final_val_loss=session.curve[-1][1] if session.curve else None,
        wall_seconds=session.previous_seconds + time.perf_counter() - session.started_at,
        trainable_params=session.trainable_params,
        adapter_dir=adapter_dir,
        train_seconds=session.train_seconds,
        eval_seconds=session.eval_seconds,
        steps=session.steps,
        resumed_from=resumed_from,
    )
