"""From a probe table to chosen ranks in one call, and the outputs a person reads.

``fit_from_table`` backs ``mars fit --probes FILE``; ``fit_from_rows`` runs
the same steps on rows held in memory. Both validate everything before any
fit, and write ``selection.json`` and the plots only after every step has
succeeded: the files go to a temporary folder inside ``out_dir`` first and
are then moved into place, so a failed fit leaves no partial output.

The pipeline, which trains joint probes between pruning and Law-P, calls
the steps separately: ``fit_convergence_laws``, ``prune``,
``fit_performance_law`` and ``select``.
"""

from __future__ import annotations

import logging
import numbers
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ..config import ProbeSettings, SearchSettings
from .alignment import prune
from .law_p import fit_performance_law
from .law_t import fit_convergence_laws
from .probe_table import ProbeRow, ProbeTableError, read_probe_table, require_usable_module_rows, validate_rows
from .selection import Selection, select
from .trainable_params import TrainableParamModel, fit_trainable_params

logger = logging.getLogger(__name__)

SELECTION_JSON = "selection.json"


def fit_from_rows(
    rows: Sequence[ProbeRow],
    target_n_train: int,
    modules: Sequence[str],
    probe_settings: ProbeSettings | None = None,
    search_settings: SearchSettings | None = None,
    out_dir: str | Path | None = None,
    param_model: TrainableParamModel | None = None,
    source: str = "probe rows",
) -> Selection:
    """Fit both laws on in-memory probe rows, prune, select, and optionally write the outputs.

    Parameters
    ----------
    rows
        Module and joint probe rows.
    target_n_train
        Dstar, the training examples of the final run.
    modules
        Module names in configuration order; the last is the reference for
        the analytic alignment solve.
    probe_settings, search_settings
        The grid comes from ``probe_settings``; tolerance, default ranks,
        budget, Law-P form, bootstrap count and seed from ``search_settings``.
        Defaults are used when None.
    out_dir
        Where ``selection.json`` and the plots go; nothing is written when None.
    param_model
        Trainable parameter coefficients; recovered from the rows when None.

    Raises ProbeTableError for unusable rows, before anything is fitted.
    """
    started = time.perf_counter()
    probe_settings = probe_settings or ProbeSettings()
    search_settings = search_settings or SearchSettings()
    modules = list(modules)
    _check_inputs(rows, modules, target_n_train, search_settings, source)
    logger.info("search fit started: %d rows, modules %s, Dstar=%d", len(rows), modules, target_n_train)

    param_model = param_model or fit_trainable_params(rows, modules)
    law_t = fit_convergence_laws(rows, modules, bootstrap=search_settings.bootstrap, seed=search_settings.seed)
    pruned = prune(law_t, probe_settings.grid(), target_n_train, search_settings.tolerance,
                   search_settings.default_ranks)
    law_p = fit_performance_law(rows, modules, param_model, form=search_settings.law_p_form,
                                bootstrap=search_settings.bootstrap, seed=search_settings.seed)
    selection = select(pruned, law_p, param_model, search_settings.max_trainable_params)

    if out_dir is not None:
        write_selection_outputs(selection, out_dir)
    logger.info("search fit done in %.2fs: chosen %s", time.perf_counter() - started, selection.chosen)
    return selection


def fit_from_table(
    path: str | Path,
    target_n_train: int,
    modules: Sequence[str],
    probe_settings: ProbeSettings | None = None,
    search_settings: SearchSettings | None = None,
    out_dir: str | Path | None = None,
    param_model: TrainableParamModel | None = None,
) -> Selection:
    """Read a probe table (Parquet or CSV), then run ``fit_from_rows`` on it.

    Raises ProbeTableError naming the file, row and column when the table
    is unusable; nothing is written in that case.
    """
    rows = read_probe_table(path, modules)
    return fit_from_rows(rows, target_n_train, modules, probe_settings, search_settings, out_dir, param_model,
                         source=str(path))


def write_selection_outputs(selection: Selection, out_dir: str | Path) -> list[Path]:
    """Write ``selection.json`` and the plots into ``out_dir``, replacing earlier ones.

    Everything is written into a temporary folder inside ``out_dir`` and each
    file is then renamed into place, so an error while plotting leaves the
    folder as it was.
    """
    from .plots import write_plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".selection-", dir=out_dir))
    try:
        (staging / SELECTION_JSON).write_text(selection.to_json() + "\n")
        written = [staging / SELECTION_JSON, *write_plots(selection, staging)]
        final = []
        for path in written:
            target = out_dir / path.name
            os.replace(path, target)
            final.append(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote %s", ", ".join(str(p) for p in final))
    return final


def format_candidate_table(selection: Selection, limit: int = 15) -> str:
    """Render the kept candidates, best predicted loss first, as a fixed-width table.

    Marks: ``*`` chosen, ``=`` tie within one standard error, ``B`` over the
    budget. At most ``limit`` rows are shown, the chosen ranks always among them.
    """
    modules = selection.modules
    kept = [c for c in selection.candidates if c.kept]
    kept.sort(key=lambda c: (c.predicted_loss if c.predicted_loss is not None else float("inf")))
    shown = kept[:limit]
    chosen = [c for c in kept if c.chosen]
    if chosen and chosen[0] not in shown:
        shown = shown[: max(limit - 1, 0)] + chosen

    rank_headers = [f"r_{m}" for m in modules]
    time_headers = [f"t_{m}" for m in modules]
    header = ["", *rank_headers, *time_headers, "spread", "loss", "±se", "params"]
    lines = [header]
    for c in shown:
        mark = ""
        if c.chosen:
            mark = "*"
        elif c.dropped_by_budget:
            mark = "B"
        elif c.tie:
            mark = "="
        lines.append([
            mark,
            *(str(c.ranks[m]) for m in modules),
            *(f"{c.t_conv[m]:.4g}" for m in modules),
            f"{c.log_spread:.3f}",
            "n/a" if c.predicted_loss is None else f"{c.predicted_loss:.4f}",
            "n/a" if c.loss_se is None else f"{c.loss_se:.4f}",
            f"{c.trainable_params:,}",
        ])
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in lines]

    footer = f"{len(kept)} kept of {len(selection.candidates)} candidates"
    if len(kept) > len(shown):
        footer += f", {len(kept) - len(shown)} not shown"
    footer += "; * chosen, = tie within one standard error, B over the parameter budget"
    if selection.fallback_reason:
        footer += f"\nfallback to default ranks {selection.chosen}: {selection.fallback_reason}"
    return "\n".join([*text, footer])


def _check_inputs(
    rows: Sequence[ProbeRow], modules: list[str], target_n_train: int, settings: SearchSettings, source: str
) -> None:
    """Validate the rows and settings together, before any fitting."""
    if not modules:
        raise ValueError("modules is empty; name at least one module, e.g. ['vision', 'llm']")
    if not isinstance(target_n_train, numbers.Integral) or isinstance(target_n_train, bool) or target_n_train < 1:
        raise ValueError(f"target_n_train={target_n_train!r} is invalid; give the final run's training examples as an integer >= 1")
    missing = [m for m in modules if m not in settings.default_ranks]
    if missing:
        raise ValueError(f"search.default_ranks has no rank for module(s) {missing}; give one per module")
    validate_rows(rows, modules, source=source)
    require_usable_module_rows(rows, modules, source=source)
    if not any(r.kind == "joint" and r.usable for r in rows):
        counts: dict[str, int] = {}
        for row in rows:
            if row.kind == "joint":
                counts[row.status] = counts.get(row.status, 0) + 1
        raise ProbeTableError(
            f"{source}: no usable joint probe (status ok or empirical); joint rows by status: {counts or 'none'}. "
            f"Law-P needs joint probes; run them first."
        )
