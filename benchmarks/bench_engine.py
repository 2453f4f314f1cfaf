"""Compare the training engine's step time with a bare PyTorch loop.

Both train the same model with the same LoRA ranks on the same batches:
the bare loop gets the batches collated in advance and only runs forward,
loss, backward, gradient clipping and the optimizer step. The engine's time
is ``TrainResult.train_seconds / steps``: batch assembly, the non-finite
check and the scheduler step count, validation does not. Runs alternate
(engine, bare, engine, ...) so that load from other processes hits both
alike, and the median of the per-repeat ratios is reported.

Usage::

    python benchmarks/bench_engine.py [--workdir DIR] [--steps 64] [--repeats 3] [--threads 1]

It builds (or reuses) the demo dataset and the default demo model under
``--workdir``. Prints one line per run and the ratio engine / bare.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from mars_core.config import MarsConfig  # noqa: E402
from mars_core.data import load_split, prepare_dataset  # noqa: E402
from mars_core.model import apply_lora, load_base_model, prepare_base_model  # noqa: E402
from mars_core.model.lora import trainable_parameters  # noqa: E402
from mars_core.model.prompting import answer_loss_sum, collate  # noqa: E402
from mars_core.train import RunSpec, train_run  # noqa: E402
from mars_core.train.batches import SampleStream, encode_vqa, subset_indices  # noqa: E402


def engine_step_seconds(cfg: MarsConfig, base, dataset, spec: RunSpec) -> float:
    result = train_run(cfg, base, dataset, spec, None)
    return result.train_seconds / result.steps


def bare_step_seconds(cfg: MarsConfig, base, dataset, spec: RunSpec) -> float:
    model, processor = load_base_model(cfg.model, base)
    model, _plan = apply_lora(model, cfg, spec.ranks, seed=cfg.train.seed)
    model.train()
    params = [param for _, param in trainable_parameters(model)]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)

    # The same subset, order and padding as the engine uses, collated before timing starts.
    split = load_split(dataset.path, "train")
    examples = encode_vqa(processor, [split[i] for i in subset_indices(len(split), spec.n_train, cfg.train.seed)])
    stream = SampleStream(spec.n_train, cfg.train.seed)
    batch_size = cfg.train.batch_size
    batches = [
        collate([examples[p] for p in stream.positions(start, batch_size)], processor.tokenizer.pad_token_id)
        for start in range(0, spec.budget_samples, batch_size)
    ]

    started = time.perf_counter()
    for batch in batches:
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"]
        ).logits
        loss_sum, n_tokens = answer_loss_sum(logits, batch["labels"])
        (loss_sum / n_tokens).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - started) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="mars-work", help="Folder for the demo dataset and model (default: mars-work).")
    parser.add_argument("--steps", type=int, default=64, help="Optimizer steps per timed run (default: 64).")
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs of each kind (default: 3).")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1).")
    parser.add_argument("--vision-rank", type=int, default=8)
    parser.add_argument("--llm-rank", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    cfg = MarsConfig()
    # Validation only before and after training: its time is not part of a step anyway.
    cfg.train.eval_every = 10**9
    workdir = Path(args.workdir)
    dataset = prepare_dataset(cfg.data, workdir / "datasets")
    base = prepare_base_model(cfg.model, workdir / "models")
    spec = RunSpec(
        ranks={"vision": args.vision_rank, "llm": args.llm_rank},
        n_train=dataset.n_train // 2,
        budget_samples=args.steps * cfg.train.batch_size,
        kind="probe",
    )

    engine, bare = [], []
    for repeat in range(args.repeats):
        engine.append(engine_step_seconds(cfg, base, dataset, spec))
        bare.append(bare_step_seconds(cfg, base, dataset, spec))
        print(f"repeat {repeat + 1}: engine {engine[-1] * 1000:.2f} ms/step, bare {bare[-1] * 1000:.2f} ms/step")

    # Each repeat pairs two runs taken moments apart, so the median of the paired
    # ratios is less sensitive to load from other processes than a ratio of medians.
    ratio = statistics.median(e / b for e, b in zip(engine, bare))
    print(
        f"ranks {spec.ranks}, batch {cfg.train.batch_size}, {args.steps} steps, {args.threads} thread(s): "
        f"median engine {statistics.median(engine) * 1000:.2f} ms/step, "
        f"median bare {statistics.median(bare) * 1000:.2f} ms/step, median paired ratio {ratio:.3f}"
    )


if __name__ == "__main__":
    main()
