"""The iMAML Figure 2 sections of a report: the paper's claims checked on Figure 2a's records, and Figure 2b's
memory per inner step per task with its extrapolation to the paper's task batch.

Figure 2a (the ``fig2a`` preset): relative error to the exact hypergradient vs inner GD steps K, MAML and iMAML
with m CG iterations. The paper says iMAML is better than MAML at every finite K, 2 CG iterations give a small
plateau and 5 none. Those claims are checked per spectrum of the inner Hessian, because they hold only when it has
few distinct eigenvalues (CG is exact in as many iterations as there are distinct eigenvalues).

Figure 2b (the ``fig2b`` preset): peak live-tensor memory of one hypergradient on ONE task vs K. The least-squares
slope is the memory per inner step per task; the paper's figure is per meta-batch, so the extrapolation multiplies
by the task batch, assuming the whole batch is differentiated in one graph (memory adds up over tasks; metabench's
default differentiates one task per graph, which is the one-task figure itself).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from metabench.report.document import Section, Table, fmt_number

__all__ = ["PAPER_TASK_BATCHES", "fig2a_section", "fig2b_section"]

#: task batches to extrapolate Figure 2b's memory to (the paper's "12 GB at about 16 steps" sits in this range)
PAPER_TASK_BATCHES = (16, 32)
PAPER_STEPS = 16
#: errors below this are float64 rounding: two methods both there are tied
ROUND_OFF = 1e-10
_MIB = 2**20


def _param(records: pd.DataFrame, name: str) -> pd.Series:
    return records["problem_params"].map(lambda p: p.get(name) if isinstance(p, dict) else None)


def _spectrum_label(spectrum, distinct, dim) -> str:
    if spectrum == "clustered":
        return f"clustered: {distinct} distinct eigenvalues"
    return f"{spectrum or 'geometric'}: {dim} distinct eigenvalues"


def fig2a_section(records: pd.DataFrame) -> Section | None:
    """The paper's Figure 2a claims, per spectrum and kappa; None without records that vary the spectrum."""
    if "problem_params" not in records:
        return None
    data = records[(records["status"] == "ok") & (records["problem"] == "linear_meta_regression")]
    data = data[data["algorithm"].isin(["maml", "imaml"]) & np.isfinite(data["rel_error_exact"].astype(float))]
    if data.empty:
        return None
    data = data.assign(spectrum=_param(data, "spectrum").fillna("geometric"), distinct=_param(data, "distinct"))
    if "inner_solver" in data:  # Figure 2a runs GD inner loops
        data = data[data["inner_solver"].fillna("gd") == "gd"]
    if data.empty or not (data["spectrum"] != "geometric").any():  # only where a spectrum was chosen to show it
        return None
    section = Section("iMAML Figure 2a: the paper's claims, per spectrum")
    section.blocks.append(
        "iMAML's Figure 2a claims that iMAML's meta-gradient is closer to the exact one than MAML's at every finite "
        "number of inner steps K, that 2 CG iterations leave a small plateau and 5 none. CG solves exactly in as "
        "many iterations as the inner Hessian has distinct eigenvalues, so the claims are checked per spectrum "
        "(the figure itself is among the figures below, one panel row per spectrum). 'Better at every K' counts "
        "the measured K where iMAML's error is below MAML's (K where both are at float64 rounding, below 1e-10, "
        "are ties and left out); the plateau is the error at the largest K measured."
    )
    rows = []
    for (spectrum, distinct, kappa), group in data.groupby(["spectrum", data["distinct"].fillna(-1), "kappa"]):

        def by_steps(part: pd.DataFrame) -> pd.Series:  # repeats of a case: their median
            return part.groupby("inner_steps")["rel_error_exact"].median().astype(float)

        maml = by_steps(group[group["algorithm"] == "maml"])
        dim = int(group["dim"].max()) if "dim" in group else None
        label = _spectrum_label(spectrum, int(distinct) if distinct != -1 else None, dim)
        for m, imaml in group[group["algorithm"] == "imaml"].groupby("cg_iters"):
            err = by_steps(imaml)
            # both at float64 rounding is a tie, not a loss: such K are left out of the count
            shared = sorted(k for k in set(err.index) & set(maml.index) if max(err[k], maml[k]) > ROUND_OFF)
            better = sum(err[k] < maml[k] for k in shared)
            largest = max(err.index)
            plateau = float(err[largest])
            rows.append(
                [
                    label,
                    fmt_number(float(kappa)),
                    f"imaml, {int(m)} CG",
                    f"{better} of {len(shared)}" + (" (every K)" if shared and better == len(shared) else ""),
                    f"{fmt_number(plateau)} at K = {int(largest)}",
                    fmt_number(float(maml[largest])) if largest in maml.index else "-",
                ]
            )
    section.blocks.append(
        Table(
            ["spectrum", "kappa", "method", "K where iMAML beats MAML", "iMAML error at the largest K", "MAML there"],
            rows,
            caption="With few distinct eigenvalues the claims hold; with an evenly spread spectrum 5 CG iterations "
            "leave a plateau and MAML overtakes iMAML at large K",
        )
    )
    return section


def fig2b_section(records: pd.DataFrame) -> Section | None:
    """Memory per inner step per task, per net and algorithm, with the extrapolation; None without such records."""
    if "problem_params" not in records or "live_peak_bytes" not in records:
        return None
    data = records[(records["status"] == "ok") & (records["problem"] == "few_shot_classification")]
    data = data[np.isfinite(data["live_peak_bytes"].astype(float))]
    if data.empty:
        return None
    data = data.assign(
        downsample=_param(data, "downsample").fillna("maxpool"),
        ways=_param(data, "ways"),
        shots=_param(data, "shots"),
        n_tasks=_param(data, "n_tasks"),
    )
    data = data[data["n_tasks"] == 1]
    if data.empty or data["inner_steps"].nunique() < 2:
        return None
    section = Section("iMAML Figure 2b: memory per inner step per task")
    section.blocks.append(
        "Peak live-tensor memory of one hypergradient on one task, fitted against the inner steps K (least "
        "squares): the slope is the memory per inner step per task. iMAML's figure is per meta-batch: the "
        f"extrapolation to {' and '.join(map(str, PAPER_TASK_BATCHES))} tasks at K = {PAPER_STEPS} multiplies the "
        "one-task peak by the batch, which assumes the whole batch is differentiated in one graph (memory adds up "
        "over tasks; metabench's own default, one task per graph, stays at the one-task figure) and float32 as "
        "measured. The paper reports about 12 GB at about 16 steps for MAML: compare the two nets below."
    )
    rows = []
    for (downsample, algorithm, ways, shots), group in data.groupby(["downsample", "algorithm", "ways", "shots"]):
        K = group["inner_steps"].astype(float).to_numpy()
        peak = group["live_peak_bytes"].astype(float).to_numpy()
        slope, intercept = np.polyfit(K, peak, 1) if len(set(K)) > 1 else (math.nan, math.nan)
        at = intercept + slope * PAPER_STEPS
        params = group["problem_params"].iloc[0]
        net = f"conv4-{params.get('filters', 64)}, {'stride-2 convolutions' if downsample == 'stride' else 'max-pool'}"
        rows.append(
            [
                net,
                algorithm,
                f"{int(ways)}-way {int(shots)}-shot",
                fmt_number(slope / _MIB, 4) if abs(slope) >= 0.5 else "0",
                fmt_number(intercept / _MIB, 4),
                fmt_number(at / _MIB, 4),
                *(fmt_number(at * b / 2**30, 3) for b in PAPER_TASK_BATCHES),
                f"{int(K.min())}..{int(K.max())}",
            ]
        )
    section.blocks.append(
        Table(
            [
                "net",
                "algorithm",
                "task",
                "MiB per inner step per task",
                "MiB at K = 0 (fit)",
                f"MiB per task at K = {PAPER_STEPS}",
                *(f"GiB for {b} tasks at K = {PAPER_STEPS}" for b in PAPER_TASK_BATCHES),
                "K measured",
            ],
            rows,
            caption="Memory per inner step per task; the GiB columns are extrapolations (assumptions above)",
        )
    )
    return section
