"""Time the search core on 40 synthetic probes over an 8 x 8 rank grid.

The probes are 32 module probes (2 modules x 8 ranks x 2 data sizes) and 8
joint probes, drawn from known laws with 3% noise. Each has a 65-point loss
curve. One repetition measures:

* curves: ``curve_to_convergence`` on all 40 curves;
* laws + selection: Law-T with bootstrap, pruning, Law-P with bootstrap and
  selection (``fit_from_rows`` without writing outputs);
* plots: the three PNGs (reported apart, not part of the target).

The target is laws + selection under 2 seconds with the default bootstrap
(200 resamples). Timings on a shared machine are noisy, so the script
repeats and prints the median and minimum.

Run: ``python benchmarks/bench_search.py [--repeats 5] [--bootstrap 200]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from mars_core.config import ProbeSettings, SearchSettings
from mars_core.search import curve_to_convergence, fit_from_rows, write_selection_outputs
from mars_core.search.synthetic import EXAMPLE_LAWS, synthetic_probe_rows

GRID = [2, 4, 8, 16, 32, 64, 128, 256]
SIZES = (2000, 4000)
DSTAR = 8000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="Timed repetitions (default 5).")
    parser.add_argument("--bootstrap", type=int, default=200, help="Bootstrap resamples (default 200).")
    args = parser.parse_args()

    rows = synthetic_probe_rows(EXAMPLE_LAWS, GRID, SIZES, ranks_per_module=8, joint_probes=8, noise=0.03,
                                seed=0, with_curves=True)
    probe_settings = ProbeSettings(min_rank=GRID[0], max_rank=GRID[-1])
    search_settings = SearchSettings(bootstrap=args.bootstrap)
    print(f"{len(rows)} probes ({sum(r.kind == 'module' for r in rows)} module, "
          f"{sum(r.kind == 'joint' for r in rows)} joint), grid {len(GRID)} x {len(GRID)}, "
          f"bootstrap {args.bootstrap}")

    curve_times, fit_times, plot_times = [], [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for row in rows:
            curve_to_convergence(row.curve, row.samples_seen)
        curve_times.append(time.perf_counter() - started)

        started = time.perf_counter()
        selection = fit_from_rows(rows, DSTAR, ["vision", "llm"], probe_settings, search_settings)
        fit_times.append(time.perf_counter() - started)

        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            write_selection_outputs(selection, folder)
        plot_times.append(time.perf_counter() - started)

    for name, values in (("curves (40 fits)", curve_times), ("laws + selection", fit_times),
                         ("plots + json", plot_times)):
        print(f"{name:>18}: median {statistics.median(values):.3f} s, min {min(values):.3f} s")
    total = [c + f for c, f in zip(curve_times, fit_times)]
    print(f"{'curves + laws':>18}: median {statistics.median(total):.3f} s, min {min(total):.3f} s")
    print(f"chosen ranks: {selection.chosen}; target: laws + selection under 2 s -> "
          f"{'met' if statistics.median(fit_times) < 2.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
