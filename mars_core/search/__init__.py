"""MARS search core: from a probe table to one LoRA rank per module.

The steps, in pipeline order:

1. ``curve_to_convergence`` turns each probe's validation-loss curve into a
   convergence time and a status for its ``ProbeRow``.
2. ``fit_convergence_laws`` fits Law-T per module on the module probes.
3. ``prune`` keeps the grid candidates whose modules converge together at
   the target data size.
4. ``joint_design`` and ``joint_probe_budget`` choose the joint probes and
   their length in samples. ``fit_performance_law`` fits Law-P on them.
5. ``select`` picks the kept candidate with the lowest predicted loss.

``fit_from_table`` and ``fit_from_rows`` run steps 2 to 5 at once. This
package needs numpy, scipy, pyarrow and matplotlib only: it imports neither
torch, Prefect nor MLflow.
"""

from .alignment import AnalyticSolution, GridCandidate, PruneResult, prune, snap_to_grid
from .convergence import CurveFit, curve_to_convergence, empirical_convergence_time
from .design import joint_design, joint_probe_budget, module_probe_ranks
from .fit import fit_from_rows, fit_from_table, format_candidate_table, write_selection_outputs
from .law_p import LAW_P_FORMS, LawPForm, LawPInputs, LawPResult, fit_performance_law, register_law_p_form
from .law_t import LawTResult, ModuleLawT, fit_convergence_laws
from .probe_table import (
    PROBE_STATUSES,
    USABLE_STATUSES,
    ProbeRow,
    ProbeTableError,
    probe_id,
    read_probe_table,
    table_columns,
    validate_rows,
    write_probe_table,
)
from .selection import Candidate, Selection, select
from .trainable_params import TrainableParamModel, fit_trainable_params

__all__ = [
    "AnalyticSolution", "Candidate", "CurveFit", "GridCandidate", "LAW_P_FORMS", "LawPForm", "LawPInputs",
    "LawPResult", "LawTResult", "ModuleLawT", "PROBE_STATUSES", "ProbeRow", "ProbeTableError", "PruneResult",
    "Selection", "TrainableParamModel", "USABLE_STATUSES", "curve_to_convergence", "empirical_convergence_time",
    "fit_convergence_laws", "fit_from_rows", "fit_from_table", "fit_performance_law", "fit_trainable_params",
    "format_candidate_table", "joint_design", "joint_probe_budget", "module_probe_ranks", "probe_id", "prune",
    "read_probe_table", "register_law_p_form", "select", "snap_to_grid", "table_columns", "validate_rows",
    "write_probe_table", "write_selection_outputs",
]
