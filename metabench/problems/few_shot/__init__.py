"""Few-shot learning with a neural network: N-way K-shot classification (or regression) tasks, as a package.

- :mod:`.problem`: :class:`FewShotClassification`, its three formulations ("maml", "bilevel", "anil"), task checks and
  the loop / vmap batching paths (whose check, :func:`metabench.vmap_check.verify_vmap`, lives above);
- :mod:`.network`: flat vectors <-> named weight views, the functional call, the data loss, norm detection;
- :mod:`.workloads`: the named factories (omniglot_like, imaml_omniglot, digits, sinusoid, generate);
- :mod:`.reference`: the float64 references (converged hypergradient, K-step algorithm gradient);
- :mod:`.options`: the choices (formulations, losses, paths, data sets) and their checks.
"""

from metabench.problems.few_shot.options import DATASETS, DEFAULT_REG, FORMULATIONS, LOSSES, PATHS
from metabench.problems.few_shot.problem import FewShotClassification, VmapMismatchError, VmapNotVerifiedError

__all__ = [
    "DATASETS",
    "DEFAULT_REG",
    "FORMULATIONS",
    "LOSSES",
    "PATHS",
    "FewShotClassification",
    "VmapMismatchError",
    "VmapNotVerifiedError",
]
