"""Time one short probe and one short final run on a LLaVA-1.5-7B-sized model with random weights.

The model is built from transformers' ``LlavaConfig`` defaults, which its
documentation gives as similar to llava-hf/llava-1.5-7b-hf: a CLIP
ViT-L/14 vision tower at 336 pixels (576 image tokens) and a 7B Llama
language model with 32 layers. Its weights are random,
so the losses mean nothing; the step time and the peak memory are what a
real checkpoint of that size costs. The tokenizer is a small word-level one
(the embedding keeps the published vocabulary size), and the data are the
embedded digits task.

The model is saved to ``--workdir`` and loaded back through MARS's public
path (``prepare_base_model``, then ``train_run``), with the dtype, device
and gradient checkpointing options of ``model``.

Usage, on a GPU::

    python benchmarks/bench_real_size.py --device cuda --dtype bf16

On a CPU, check the script itself with a cut-down depth (the widths stay
those of the 7B model)::

    python benchmarks/bench_real_size.py --device cpu --dtype bf16 --text-layers 1 --vision-layers 1 --steps 2

Prints one line per run and writes ``result.json`` under ``--workdir``.

NOTE: so far this has run only on a CPU with the depth cut down. The GPU
figures (step time and peak memory in bf16) are still to be measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from mars_core.config import MarsConfig  # noqa: E402
from mars_core.data import prepare_dataset  # noqa: E402
from mars_core.model import prepare_base_model  # noqa: E402
from mars_core.train import RunSpec, train_run  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))
from tests.mars_core.model.tiny_families import LLAVA, build_tokenizer  # noqa: E402

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_model_folder(folder: Path, text_layers: int | None, vision_layers: int | None, dtype: str,
                       device: str) -> dict:
    """Save a random LLaVA-1.5-7B-sized model and its processor to ``folder``, and return its sizes."""
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = build_tokenizer(["<s>", "</s>", "<image>"], {"eos_token": "</s>"}, {"image_token": "<image>"})
    config = LlavaConfig()
    config.image_token_index = tokenizer.convert_tokens_to_ids("<image>")
    config.text_config.pad_token_id = tokenizer.pad_token_id
    config.text_config.eos_token_id = tokenizer.eos_token_id
    if text_layers is not None:
        config.text_config.num_hidden_layers = text_layers
    if vision_layers is not None:
        config.vision_config.num_hidden_layers = vision_layers
    vision = config.vision_config
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": vision.image_size},
                                              crop_size={"height": vision.image_size, "width": vision.image_size}),
        tokenizer=tokenizer, patch_size=vision.patch_size, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA,
    )
    build_device = "cuda" if device in ("cuda", "auto") and torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(build_device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=_DTYPES[dtype])
    parameters = sum(p.numel() for p in model.parameters())
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    del model
    logging.info("built and saved %.2fB parameters in %.0f s", parameters / 1e9, time.perf_counter() - started)
    return {
        "parameters": parameters,
        "text_layers": config.text_config.num_hidden_layers,
        "vision_layers": vision.num_hidden_layers,
        "text_hidden_size": config.text_config.hidden_size,
        "vision_hidden_size": vision.hidden_size,
        "image_tokens": (vision.image_size // vision.patch_size) ** 2,
    }


def measure(cfg: MarsConfig, base, dataset, spec: RunSpec, out_dir: Path | None) -> dict:
    """Run one fine-tune and return its step time and peak memory."""
    on_cuda = torch.cuda.is_available() and cfg.model.device != "cpu"
    if on_cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    result = train_run(cfg, base, dataset, spec, out_dir)
    if result.status != "ok":
        raise RuntimeError(f"the {spec.kind} run failed: {result.reason}")
    row = {
        "kind": spec.kind,
        "ranks": spec.ranks,
        "steps": result.steps,
        "step_seconds": result.train_seconds / result.steps,
        "wall_seconds": result.wall_seconds,
        "trainable_params": result.trainable_params,
        "final_val_loss": result.final_val_loss,
    }
    if on_cuda:
        row["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    # ru_maxrss is in KiB on Linux. It is the peak of the whole process so far.
    row["peak_process_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("mars-work/bench-real-size"))
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    parser.add_argument("--dtype", choices=list(_DTYPES), default="bf16")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps of each run")
    parser.add_argument("--text-layers", type=int, help="cut the language model to this many layers (default: 32)")
    parser.add_argument("--vision-layers", type=int, help="cut the vision tower to this many layers (default: 24)")
    parser.add_argument("--probe-ranks", default="8,8", help="vision,llm ranks of the probe")
    parser.add_argument("--final-ranks", default="16,64", help="vision,llm ranks of the final run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    model_folder = args.workdir / f"llava-7b-size-t{args.text_layers or 'all'}-v{args.vision_layers or 'all'}-{args.dtype}"
    sizes = build_model_folder(model_folder, args.text_layers, args.vision_layers, args.dtype, args.device)
    samples = args.steps * args.batch_size
    cfg = MarsConfig.model_validate({
        "model": {"name_or_path": str(model_folder), "dtype": args.dtype, "device": args.device,
                  "gradient_checkpointing": args.gradient_checkpointing},
        "data": {"max_train_examples": max(samples, 64)},
        "train": {"batch_size": args.batch_size, "warmup_samples": 0, "eval_every": samples,
                  "val_subset": args.batch_size, "eval_batch_size": args.batch_size},
        "final": {"checkpoint_every": 10 * samples},
    })
    dataset = prepare_dataset(cfg.data, args.workdir / "datasets")
    base = prepare_base_model(cfg.model, args.workdir / "models")

    rows = []
    for kind, ranks in (("probe", args.probe_ranks), ("final", args.final_ranks)):
        vision, llm = (int(value) for value in ranks.split(","))
        spec = RunSpec({"vision": vision, "llm": llm}, n_train=samples, budget_samples=samples, kind=kind)
        out_dir = args.workdir / "final" if kind == "final" else None
        row = measure(cfg, base, dataset, spec, out_dir)
        rows.append(row)
        memory = (f"peak GPU memory {row['peak_gpu_memory_gib']:.1f} GiB" if "peak_gpu_memory_gib" in row
                  else f"peak process RSS {row['peak_process_rss_gib']:.1f} GiB")
        print(f"{kind:5s} ranks vision {vision} llm {llm}: {row['steps']} steps of {args.batch_size}, "
              f"{row['step_seconds']:.3f} s/step, {memory}, {row['trainable_params']:,} trainable parameters")

    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    result = {"model": sizes, "device": device, "dtype": args.dtype, "torch": torch.__version__,
              "gradient_checkpointing": args.gradient_checkpointing, "batch_size": args.batch_size, "runs": rows}
    (args.workdir / "result.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {args.workdir / 'result.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
