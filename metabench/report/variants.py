"""How records are named and coloured in reports: one label and one colour per algorithm variant.

A variant is an algorithm with its inner solver (iMAML's Table 1 has a row for MAML with GD and one
with Nesterov's accelerated gradient). Colours are fixed per algorithm, so every figure agrees.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["ALGORITHM_COLOURS", "THEORY", "colour_of", "variant_label", "with_variants"]

ALGORITHM_COLOURS = {
    "maml": "#1f77b4",
    "truncated": "#ff7f0e",
    "fomaml": "#2ca02c",
    "imaml": "#d62728",
    "itd_bio": "#9467bd",
    "rm_metal": "#8c564b",
    "neumann": "#e377c2",
}
_FALLBACK = "#7f7f7f"

#: The theory line each Table 1 row is compared with: the compute exponent in kappa, memory and error, and where
#: the line comes from. iMAML's Table 1 (Rajeswaran et al. 2019) states MAML with GD and with Nesterov's method and
#: implicit MAML with an accelerated inner solver; implicit MAML with a GD inner solve is metabench's own line:
#: K ~ kappa log(1/delta) GD steps reach a delta-accurate phi, and they dominate the sqrt(kappa) log(1/delta) CG
#: iterations, so its least compute grows like kappa.
PAPER = "iMAML Table 1"
THEORY = {
    "maml (GD)": {
        "exponent": 1.0,
        "compute": "kappa log(D/delta)",
        "memory": "Mem(grad) x K",
        "error": "0",
        "source": PAPER,
    },
    "maml (Nesterov)": {
        "exponent": 0.5,
        "compute": "sqrt(kappa) log(D/delta)",
        "memory": "Mem(grad) x K",
        "error": "0",
        "source": PAPER + ", row 2: MAML with an accelerated inner solver",
    },
    "truncated (GD)": {
        "exponent": None,
        "compute": "kappa log(D/delta)",
        "memory": "Mem(grad) x T",
        "error": "epsilon (floor set by T)",
        "source": PAPER,
    },
    "fomaml (GD)": {
        "exponent": None,
        "compute": "K (first order)",
        "memory": "Mem(grad)",
        "error": "biased",
        "source": "first order: no Table 1 row",
    },
    "imaml (GD)": {
        "exponent": 1.0,
        "compute": "kappa log(D/delta) (GD inner solve)",
        "memory": "about 2 Mem(grad)",
        "error": "delta",
        "source": "metabench's derivation; the paper's iMAML row assumes an accelerated inner solver",
    },
    "imaml (Nesterov)": {
        "exponent": 0.5,
        "compute": "sqrt(kappa) log(D/delta)",
        "memory": "about 2 Mem(grad)",
        "error": "delta",
        "source": PAPER + ", with an accelerated inner solver",
    },
}


def variant_label(algorithm: str, inner_solver: str | None) -> str:
    """'maml (GD)', 'imaml (Nesterov)', ... ; algorithms run only with GD keep the suffix for uniformity."""
    solver = {"gd": "GD", "nesterov": "Nesterov"}.get(inner_solver or "gd", str(inner_solver))
    return f"{algorithm} ({solver})"


def colour_of(label: str) -> str:
    """The colour of a variant label or an algorithm name."""
    return ALGORITHM_COLOURS.get(label.split(" ")[0], _FALLBACK)


def with_variants(records: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``records`` with a ``variant`` column and ``oracle_calls`` per task."""
    out = records.copy()
    solver = out["inner_solver"] if "inner_solver" in out else pd.Series("gd", index=out.index)
    out["variant"] = [variant_label(a, s if isinstance(s, str) else None) for a, s in zip(out["algorithm"], solver)]
    counts = [c for c in ("inner_grads", "outer_grads", "hvps", "jvps") if c in out]
    if counts and "task_batch" in out:
        out["oracle_calls"] = out[counts].sum(axis=1, min_count=1) / out["task_batch"]
    return out
