"""PNG plots of a search: Law-T fits, the alignment map and Law-P over the grid.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot, so
they work on headless machines and leave the caller's backend alone.
With more than two modules, the grid plots show each non-reference module
against the reference module, the other modules held at their chosen ranks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from .law_t import LawTResult
from .selection import Selection

LAW_T_PNG = "law_t.png"
ALIGNMENT_PNG = "alignment_map.png"
LAW_P_PNG = "law_p.png"


def write_plots(selection: Selection, out_dir: str | Path) -> list[Path]:
    """Write the three plots into ``out_dir`` and return their paths."""
    out_dir = Path(out_dir)
    paths = [out_dir / LAW_T_PNG, out_dir / ALIGNMENT_PNG]
    plot_law_t(selection.law_t, selection.target_n_train, paths[0])
    plot_alignment_map(selection, paths[1])
    if selection.law_p is not None:
        paths.append(out_dir / LAW_P_PNG)
        plot_law_p(selection, paths[2])
    return paths


def plot_law_t(law_t: LawTResult, target_n_train: int, path: str | Path) -> Path:
    """Plot each module's probe times against rank on log axes, with one fitted line per data size."""
    modules = law_t.modules
    figure = Figure(figsize=(5.0 * len(modules), 4.2), layout="constrained")
    axes = figure.subplots(1, len(modules), squeeze=False)[0]
    for ax, module in zip(axes, modules, strict=True):
        law = law_t.laws[module]
        sizes = sorted(set(law.n_train.astype(int).tolist()) | {int(target_n_train)})
        all_ranks = np.concatenate([law.ranks, [r for r, *_ in law.left_out]]).astype(float)
        line_ranks = np.geomspace(max(all_ranks.min() / 1.5, 1.0), all_ranks.max() * 1.5, 100)
        colours = {d: f"C{i}" for i, d in enumerate(sizes)}

        for size in sizes:
            is_target = size == int(target_n_train)
            style = "--" if is_target else "-"
            label = f"D={size}" + (" (target)" if is_target else "")
            ax.plot(line_ranks, law.predict(line_ranks, size), style, color=colours[size], label=label)
            mask = law.n_train.astype(int) == size
            if mask.any():
                ax.scatter(law.ranks[mask], law.t_conv[mask], color=colours[size], zorder=3, s=28)
        excluded = [(r, d, t, s) for r, d, t, s in law.left_out if t is not None and t > 0]
        if excluded:
            ax.scatter([r for r, *_ in excluded], [t for _, _, t, _ in excluded], marker="x", color="0.4",
                       zorder=3, label="left out (" + ", ".join(sorted({s for *_, s in excluded})) + ")")

        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"{module} rank")
        ax.set_ylabel("convergence time (samples)")
        ax.set_title(f"Law-T {module}: t0={law.t0:.3g}, b={law.b:.2f}, c={law.c:.2f}, R²(log)={law.r2_log:.3f}",
                     fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(figure, path)


def plot_alignment_map(selection: Selection, path: str | Path) -> Path:
    """Heat map of |ln t_m - ln t_ref| over the grid, with kept candidates outlined and the chosen one in red."""
    reference = selection.reference_module
    others = [m for m in selection.modules if m != reference]
    figure = Figure(figsize=(6.0 * len(others), 5.6), layout="constrained")
    axes = figure.subplots(1, len(others), squeeze=False)[0]
    limit = float(np.log1p(selection.tolerance))

    for ax, module in zip(axes, others, strict=True):
        rows, cols = selection.grid[module], selection.grid[reference]
        gap = np.full((len(rows), len(cols)), np.nan)
        snapped_shown = False
        for c in _slice(selection, module, reference):
            i, j = rows.index(c.ranks[module]), cols.index(c.ranks[reference])
            gap[i, j] = abs(np.log(c.t_conv[module]) - np.log(c.t_conv[reference]))
            if c.aligned:
                _outline(ax, i, j, "white", "-", 2.0)
            elif c.kept:
                _outline(ax, i, j, "orange", "--", 2.0)
                snapped_shown = True

        image = ax.imshow(gap, origin="lower", cmap="viridis_r", aspect="auto")
        _annotate_cells(ax, image, gap, "{:.2f}")
        colourbar = figure.colorbar(image, ax=ax)
        colourbar.set_label(f"|ln t_{module} - ln t_{reference}| at D={selection.target_n_train}")
        colourbar.ax.axhline(limit, color="red", linewidth=2)
        _outline_chosen(ax, selection, rows, cols, module, reference)

        handles = [Patch(facecolor="0.75", edgecolor="white", linewidth=2,
                         label=f"aligned: gap ≤ ln(1+{selection.tolerance:g}) = {limit:.3f} (red line)")]
        if snapped_shown:
            handles.append(Patch(facecolor="none", edgecolor="orange", linestyle="--", linewidth=2,
                                 label="kept: snapped analytic solution, not aligned"))
        handles.append(Patch(facecolor="none", edgecolor="red", linewidth=3, label=_chosen_label(selection)))
        _label_grid_axes(ax, rows, cols, module, reference)
        ax.set_title(f"Alignment of convergence times, {module} vs {reference}{_slice_note(selection, module, reference)}",
                     fontsize=10)
        _legend_below(ax, handles)
    return _save(figure, path)


def plot_law_p(selection: Selection, path: str | Path) -> Path:
    """Law-P's predicted loss over the grid; joint-probe cells also show the measured loss."""
    law_p = selection.law_p
    if law_p is None:
        raise ValueError("selection has no Law-P to plot")
    reference = selection.reference_module
    others = [m for m in selection.modules if m != reference]
    figure = Figure(figsize=(6.0 * len(others), 5.6), layout="constrained")
    axes = figure.subplots(1, len(others), squeeze=False)[0]

    for ax, module in zip(axes, others, strict=True):
        rows, cols = selection.grid[module], selection.grid[reference]
        surface = np.full((len(rows), len(cols)), np.nan)
        for c in _slice(selection, module, reference):
            if c.predicted_loss is not None:
                surface[rows.index(c.ranks[module]), cols.index(c.ranks[reference])] = c.predicted_loss
        on_grid, off_grid = _probes_in_slice(selection, module, reference)
        measured = [loss for *_, loss in on_grid + off_grid]
        low = float(np.nanmin([np.nanmin(surface), *measured]))
        high = float(np.nanmax([np.nanmax(surface), *measured]))

        image = ax.imshow(surface, origin="lower", cmap="magma_r", aspect="auto", vmin=low, vmax=high)
        probe_cells = {}
        for r_module, r_ref, loss in on_grid:
            probe_cells.setdefault((rows.index(r_module), cols.index(r_ref)), []).append(loss)
        for (i, j), losses in probe_cells.items():
            _outline(ax, i, j, "cyan", "-", 2.0)
        _annotate_cells(ax, image, surface, "{:.3f}",
                        extra={cell: f"\n({np.mean(v):.3f})" for cell, v in probe_cells.items()})
        if off_grid:
            ax.scatter(_grid_position(np.array([r for _, r, _ in off_grid]), cols),
                       _grid_position(np.array([r for r, _, _ in off_grid]), rows),
                       c=[v for *_, v in off_grid], cmap="magma_r", vmin=low, vmax=high, edgecolors="cyan",
                       s=120, linewidths=1.8, zorder=3)
        colourbar = figure.colorbar(image, ax=ax)
        colourbar.set_label(f"predicted validation loss at D={law_p.n_train}")
        _outline_chosen(ax, selection, rows, cols, module, reference)

        handles = [
            Patch(facecolor="none", edgecolor="cyan", linewidth=2, label="joint probe: predicted (measured)"),
            Patch(facecolor="none", edgecolor="red", linewidth=3, label=_chosen_label(selection)),
        ]
        _label_grid_axes(ax, rows, cols, module, reference)
        ax.set_title(f"Law-P ({law_p.form}): R²={law_p.r2:.3f}, LOO error={_format(law_p.loo_relative_error)}"
                     f"{_slice_note(selection, module, reference)}", fontsize=10)
        _legend_below(ax, handles)
    return _save(figure, path)


def _probes_in_slice(selection: Selection, module: str, reference: str) -> tuple[list, list]:
    """Joint probes of the plotted slice as (rank of module, rank of reference, loss), split by whether they sit on the grid."""
    law_p = selection.law_p
    index = {m: law_p.modules.index(m) for m in law_p.modules}
    fixed = {m: r for m, r in selection.chosen.items() if m not in (module, reference)}
    on_grid, off_grid = [], []
    for ranks, loss in zip(law_p.ranks, law_p.loss, strict=True):
        if any(ranks[index[m]] != r for m, r in fixed.items()):
            continue
        point = (int(ranks[index[module]]), int(ranks[index[reference]]), float(loss))
        inside = point[0] in selection.grid[module] and point[1] in selection.grid[reference]
        (on_grid if inside else off_grid).append(point)
    return on_grid, off_grid


def _slice(selection: Selection, module: str, reference: str) -> list:
    """Candidates that vary only ``module`` and ``reference``, the other modules at their chosen ranks."""
    fixed = {m: r for m, r in selection.chosen.items() if m not in (module, reference)}
    return [c for c in selection.candidates if all(c.ranks[m] == r for m, r in fixed.items())]


def _slice_note(selection: Selection, module: str, reference: str) -> str:
    fixed = [f"{m}={r}" for m, r in selection.chosen.items() if m not in (module, reference)]
    return f"\n(other modules at chosen ranks: {', '.join(fixed)})" if fixed else ""


def _outline_chosen(ax, selection: Selection, rows: list[int], cols: list[int], module: str, reference: str) -> None:
    """Outline the chosen cell in red; fallback ranks off the grid get a red star at their log2 position."""
    r_module, r_ref = selection.chosen[module], selection.chosen[reference]
    if r_module in rows and r_ref in cols:
        _outline(ax, rows.index(r_module), cols.index(r_ref), "red", "-", 3.5)
    else:
        ax.scatter(_grid_position(np.array([r_ref]), cols), _grid_position(np.array([r_module]), rows),
                   marker="*", s=300, color="red", edgecolors="black", zorder=4)


def _chosen_label(selection: Selection) -> str:
    ranks = ", ".join(f"{m}={r}" for m, r in selection.chosen.items())
    return f"chosen ({ranks})" + (" - fallback to default ranks" if selection.fallback_reason else "")


def _outline(ax, i: int, j: int, colour: str, style: str, width: float) -> None:
    inset = 0.04 * width
    ax.add_patch(Rectangle((j - 0.5 + inset, i - 0.5 + inset), 1 - 2 * inset, 1 - 2 * inset, fill=False,
                           edgecolor=colour, linestyle=style, linewidth=width, zorder=3))


def _grid_position(ranks: np.ndarray, grid: list[int]) -> np.ndarray:
    """Fractional grid index of each rank, interpolated in log2 so off-grid ranks land between cells."""
    return np.interp(np.log2(ranks.astype(float)), np.log2(np.asarray(grid, dtype=float)), np.arange(len(grid)))


def _label_grid_axes(ax, rows: list[int], cols: list[int], module: str, reference: str) -> None:
    ax.set_xticks(range(len(cols)), [str(r) for r in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set_xlabel(f"{reference} rank")
    ax.set_ylabel(f"{module} rank")


def _annotate_cells(ax, image, values: np.ndarray, pattern: str, extra: dict | None = None) -> None:
    """Write each cell's value in it, dark on light cells and light on dark ones; ``extra`` appends text per cell."""
    if values.size > 400:
        return
    extra = extra or {}
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            red, green, blue, _ = image.cmap(image.norm(value))
            colour = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"
            ax.text(j, i, pattern.format(value) + extra.get((i, j), ""), ha="center", va="center", fontsize=6.5,
                    color=colour, zorder=2)


def _legend_below(ax, handles: list) -> None:
    ax.legend(handles=handles, fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=1, frameon=False)


def _format(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=110)
    return path
