"""The benchmark report: ``benchmark.md`` with a comparison table and two PNG plots.

- ``cost_vs_loss.png``: validation loss against training cost in seconds,
  one point per method;
- ``grid_heatmaps.png``: the grid's realised validation loss beside Law-P's
  prediction over the same grid, with the MARS pair and the grid's best
  pair marked. It needs exactly two modules, so with more it is left out.

Figures are drawn on matplotlib's Agg canvas without pyplot, and every file
is written to a temporary name and renamed, so a failed report leaves no
half-written file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

log = logging.getLogger(__name__)

BENCHMARK_JSON = "benchmark.json"
BENCHMARK_MD = "benchmark.md"
COST_PNG = "cost_vs_loss.png"
HEATMAP_PNG = "grid_heatmaps.png"


def write_report(benchmark: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``benchmark.json``, ``benchmark.md`` and the plots into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [_write_text(out_dir / BENCHMARK_JSON, json.dumps(benchmark, indent=2, sort_keys=True, allow_nan=False))]

    plots = [plot_cost_vs_loss(benchmark, out_dir / COST_PNG)]
    if benchmark.get("grid") and len(benchmark["modules"]) == 2:
        plots.append(plot_grid_heatmaps(benchmark, out_dir / HEATMAP_PNG))
    paths.append(_write_text(out_dir / BENCHMARK_MD, format_markdown(benchmark, [p.name for p in plots])))
    log.info("benchmark report written to %s (%d plots)", out_dir, len(plots))
    return paths + plots


def format_table(benchmark: Mapping[str, Any]) -> str:
    """Render the comparison table as Markdown (it reads as plain text in a terminal too)."""
    header = ("method", "ranks", "val loss", "test loss", "test acc.", "train s", "samples", "trainable params")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in benchmark["rows"]:
        if row["status"] != "ok":
            lines.append(f"| {row['name']} | {row['status']}: {row['reason']} |" + " |" * (len(header) - 2))
            continue
        ranks = "" if not row.get("ranks") else _ranks(row["ranks"], benchmark["modules"]).strip("()")
        cells = (
            row["name"], ranks, _number(row["val_loss"], 4), _number(row["test_loss"], 4),
            _number(row["test_accuracy"], 3), _number(row["wall_seconds"], 0), _integer(row["samples"]),
            _integer(row["trainable_params"]),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_markdown(benchmark: Mapping[str, Any], plot_names: Sequence[str]) -> str:
    """Render the whole report: settings, the table, MARS against the grid, and the plots."""
    env = benchmark.get("environment", {})
    lines = [
        f"# Benchmark {benchmark['name']}",
        "",
        f"Every method trains on the full training split for {benchmark['budget_samples']} samples (the MARS final "
        "budget). Costs are training wall seconds and samples summed over every run a method needed: probes plus "
        "the final run for MARS, every pair for the grid. Validation loss is measured on the fixed validation "
        "subset, test loss and accuracy on the whole test split.",
        "",
        f"Machine: {env.get('machine', 'n/a')}; load average at start {env.get('load_average_start', 'n/a')}, "
        f"at the end {env.get('load_average_end', 'n/a')}; benchmark wall time {_number(env.get('wall_seconds'), 0)} s.",
        "",
        "## Methods",
        "",
        format_table(benchmark),
        "",
    ]
    lines += _comparison_lines(benchmark)
    for name in plot_names:
        lines += [f"![{name}]({name})", ""]
    return "\n".join(lines)


def _comparison_lines(benchmark: Mapping[str, Any]) -> list[str]:
    comparison = benchmark.get("mars_vs_grid")
    mars = benchmark.get("mars")
    if not comparison or not mars:
        return []
    targets = benchmark["targets"]
    lines = ["## MARS against grid search", ""]
    ratio_label = "search cost ratio" + ("" if comparison["cost_basis"] == "measured" else f" ({comparison['cost_basis']})")
    modules = benchmark["modules"]
    lines.append(f"- MARS chose {_ranks(mars['chosen'], modules)}; {mars['candidates_after_pruning']} of "
                 f"{comparison['grid_size']} grid pairs were kept by Law-T alignment.")
    lines.append(f"- {ratio_label}: {_number(comparison['search_cost_ratio'], 1)}x in seconds "
                 f"({_number(comparison['grid_seconds'], 0)} s against {_number(comparison['mars_seconds'], 0)} s), "
                 f"{_number(comparison['search_cost_ratio_samples'], 1)}x in samples; target at least "
                 f"{targets['min_search_cost_ratio']:g}x.")
    if comparison.get("regret") is not None:
        best = comparison["grid_best"]
        lines.append(f"- regret: {100 * comparison['regret']:.2f}% against the grid's best pair {_ranks(best['ranks'], modules)} "
                     f"(validation loss {_number(best['val_loss'], 4)}); target at most {100 * targets['max_regret']:g}%.")
        lines.append(f"- place of the MARS pair: {comparison['place']} of {comparison['grid_finished']} grid pairs.")
    spearman = comparison.get("spearman")
    lines.append("- Spearman's rank correlation of Law-P's predictions with the grid's losses: "
                 + (_number(spearman, 3) if spearman is not None else f"undefined ({comparison['spearman_undefined_reason']})"))
    law_p = mars["laws"]["performance"]
    lines.append(f"- Law-P ({law_p.get('form')}): R^2 {_number(law_p.get('r2'), 3)}, leave-one-out relative error "
                 f"{_number(law_p.get('loo_rel_error'), 3)} on {law_p.get('points_used')} joint probes; predicted "
                 f"{_number(mars.get('predicted_val_loss'), 4)} for the chosen pair.")
    lines += _attribution(comparison, targets)
    return lines + [""]


def _attribution(comparison: Mapping[str, Any], targets: Mapping[str, float]) -> list[str]:
    """Say which stage lost the best pair, from the data, when the regret target is missed."""
    if comparison.get("regret") is None or comparison["regret"] <= targets["max_regret"]:
        return []
    best = comparison["grid_best"]
    if best.get("kept_by_pruning") is False:
        kept = comparison.get("best_kept_regret")
        text = (f"- The grid's best pair was pruned by Law-T alignment. The best pair that pruning kept "
                f"({comparison.get('best_kept_pair')}) has a regret of "
                f"{'n/a' if kept is None else f'{100 * kept:.2f}%'}")
        if kept is not None and kept <= targets["max_regret"]:
            text += ", so Law-P's ranking among the kept pairs also cost regret."
        else:
            text += ", so pruning alone puts the target out of reach."
        return [text]
    return ["- The grid's best pair was kept by pruning, so Law-P's ranking of the kept pairs chose another one."]


def plot_cost_vs_loss(benchmark: Mapping[str, Any], path: str | Path) -> Path:
    """Scatter validation loss against training cost (seconds, log scale), one labelled point per row."""
    rows = [r for r in benchmark["rows"] if r["status"] == "ok" and r["val_loss"] is not None and r["wall_seconds"]]
    figure = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = figure.subplots()
    colours = {method: f"C{i}" for i, method in enumerate(("mars", "uniform", "differential-lr", "adalora", "grid"))}
    for row in rows:
        ax.scatter(row["wall_seconds"], row["val_loss"], color=colours.get(row["method"], "0.3"), s=46, zorder=3,
                   marker="*" if row["method"] == "mars" else "o")
        ax.annotate(row["name"], (row["wall_seconds"], row["val_loss"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("training cost (wall seconds, summed over the method's runs)")
    ax.set_ylabel("validation loss")
    ax.set_title(f"Validation loss against cost: {benchmark['name']}")
    ax.grid(True, which="both", alpha=0.3)
    return _save(figure, path)


def plot_grid_heatmaps(benchmark: Mapping[str, Any], path: str | Path) -> Path:
    """Realised grid loss beside Law-P's prediction over the same grid; the MARS pair and the grid's best are marked."""
    first, second = benchmark["modules"]
    points = benchmark["grid"]
    rows_axis = sorted({p["ranks"][first] for p in points})
    cols_axis = sorted({p["ranks"][second] for p in points})
    realised = _surface(points, "val_loss", first, second, rows_axis, cols_axis)
    predicted = _surface(points, "predicted_loss", first, second, rows_axis, cols_axis)

    comparison = benchmark.get("mars_vs_grid") or {}
    mars = (benchmark.get("mars") or {}).get("chosen")
    best = (comparison.get("grid_best") or {}).get("ranks")
    figure = Figure(figsize=(11.0, 4.6), layout="constrained")
    axes = figure.subplots(1, 2)
    titles = ("grid: realised validation loss", "Law-P: predicted validation loss")
    for ax, surface, title in zip(axes, (realised, predicted), titles, strict=True):
        if np.isfinite(surface).any():
            image = ax.imshow(surface, origin="lower", cmap="magma_r", aspect="auto")
            figure.colorbar(image, ax=ax, label="validation loss")
            for (i, j), value in np.ndenumerate(surface):
                if np.isfinite(value):
                    ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=6, color="0.5")
        else:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        _mark(ax, mars, first, second, rows_axis, cols_axis, "*", "cyan", "MARS pair")
        _mark(ax, best, first, second, rows_axis, cols_axis, "s", "lime", "grid best")
        ax.set_xticks(range(len(cols_axis)), [str(r) for r in cols_axis])
        ax.set_yticks(range(len(rows_axis)), [str(r) for r in rows_axis])
        ax.set_xlabel(f"rank of {second}")
        ax.set_ylabel(f"rank of {first}")
        ax.set_title(title)
        if mars or best:
            # Below the axes, so the legend never covers a cell.
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)
    return _save(figure, path)


def _surface(points, key, first, second, rows_axis, cols_axis) -> np.ndarray:
    surface = np.full((len(rows_axis), len(cols_axis)), np.nan)
    for point in points:
        value = point.get(key)
        if value is not None and math.isfinite(value):
            surface[rows_axis.index(point["ranks"][first]), cols_axis.index(point["ranks"][second])] = value
    return surface


def _mark(ax, ranks, first, second, rows_axis, cols_axis, marker, colour, label) -> None:
    if not ranks or ranks.get(first) not in rows_axis or ranks.get(second) not in cols_axis:
        return
    ax.scatter(cols_axis.index(ranks[second]), rows_axis.index(ranks[first]), marker=marker, s=180,
               facecolors="none" if marker == "s" else colour, edgecolors=colour, linewidths=2, label=label, zorder=4)


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    FigureCanvasAgg(figure)
    staging = path.with_name(f".{path.stem}-{uuid.uuid4().hex[:8]}{path.suffix}")
    figure.savefig(staging, dpi=110)
    os.replace(staging, path)
    return path


def _write_text(path: Path, text: str) -> Path:
    staging = path.with_name(f".{path.name}-{uuid.uuid4().hex[:8]}.tmp")
    staging.write_text(text + "\n")
    os.replace(staging, path)
    return path


def _ranks(ranks: Mapping[str, int] | None, modules: Sequence[str]) -> str:
    """Write ranks in module order, as ``(vision 8, llm 16)``; JSON files keep keys sorted, not in that order."""
    return "n/a" if not ranks else "(" + ", ".join(f"{m} {ranks[m]}" for m in modules if m in ranks) + ")"


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _integer(value: int | None) -> str:
    return "n/a" if value is None else f"{int(value):,}"
