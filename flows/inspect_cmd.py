"""`mars inspect MODEL`: print the modules MARS finds in a base model, before any search."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_inspect_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `inspect` subcommand to the `mars` command's subparsers."""
    parser = subparsers.add_parser(
        "inspect",
        help="print a model's modules, their LoRA-targetable linear layers and trainable parameters per rank",
    )
    parser.add_argument("model", help="local model folder, Hugging Face Hub id, or `demo`")
    parser.add_argument("--config", type=Path, help="YAML configuration, for model.* and lora.modules settings")
    parser.add_argument("--summary", action="store_true", help="one line per module, without the layer names")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="configuration overrides, e.g. model.revision=<commit> model.module_patterns.vision=...")
    parser.set_defaults(handler=run_inspect)
    return parser


def run_inspect(args: argparse.Namespace) -> int:
    """Print the inspection report; exit status 2 when the model cannot be found or split."""
    from mars_core.config import load_config
    from mars_core.model.inspection import format_report, inspect_model
    from mars_core.model.modules import ModuleDiscoveryError

    cfg = load_config(args.config, [*args.overrides, f"model.name_or_path={args.model}"])
    cache_root = Path(cfg.runtime.workdir) / "models"
    try:
        report = inspect_model(cfg, cache_root)
    except (FileNotFoundError, ModuleDiscoveryError) as exc:
        print(f"mars: error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report, show_layers=not args.summary))
    return 0
