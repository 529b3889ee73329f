"""The report's figures, drawn with seaborn from records alone; each is saved as PNG and SVG.

Colours come from ``variants.colour_of``: one colour per algorithm in every figure.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from metabench.report.fitting import fit_power_law  # noqa: E402
from metabench.report.variants import colour_of, with_variants  # noqa: E402

__all__ = [
    "compute_memory_vs_steps",
    "convergence",
    "error_vs_steps",
    "least_compute_vs_kappa",
    "memory_vs_steps_bilevel",
    "save",
]

sns.set_theme(context="paper", style="whitegrid")


def save(fig, out_dir: Path, name: str) -> dict[str, Path]:
    """Write ``fig`` as ``name.png`` (150 dpi) and ``name.svg``; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{name}.{ext}" for ext in ("png", "svg")}
    fig.savefig(paths["png"], dpi=150, bbox_inches="tight")
    fig.savefig(paths["svg"], bbox_inches="tight")
    plt.close(fig)
    return paths


def _palette(labels) -> dict[str, str]:
    return {label: colour_of(label) for label in labels}


def _ok(records: pd.DataFrame, column: str) -> pd.DataFrame:
    data = with_variants(records[records["status"] == "ok"])
    return data[np.isfinite(data[column].astype(float))] if column in data else data.iloc[0:0]


def _curve_label(variant: str, cg_iters) -> str:
    if not variant.startswith("imaml"):
        return variant.split(" ")[0]
    known = cg_iters is not None and np.isfinite(float(cg_iters))
    return f"imaml, {int(cg_iters)} CG" if known else "imaml"


def error_vs_steps(records: pd.DataFrame, kappa: float) -> plt.Figure | None:
    """iMAML Figure 2a: relative error to the exact meta-gradient vs inner GD steps, MAML and iMAML per CG count."""
    data = _ok(records, "rel_error_exact")
    data = data[(data["kappa"] == kappa) & data["variant"].isin(["maml (GD)", "imaml (GD)"])].copy()
    if data.empty:
        return None
    data["curve"] = [_curve_label(v, c) for v, c in zip(data["variant"], data["cg_iters"])]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    sns.lineplot(
        data=data,
        x="inner_steps",
        y="rel_error_exact",
        hue="algorithm",
        style="curve",
        palette=_palette(data["algorithm"].unique()),
        markers=True,
        dashes=True,
        ax=ax,
    )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="inner GD steps K",
        ylabel="relative l2 error to exact meta-gradient",
        title=f"Error vs inner steps (kappa = {kappa:g})",
    )
    ax.legend(fontsize=7, title=None)
    return fig


def compute_memory_vs_steps(records: pd.DataFrame, kappa: float) -> plt.Figure | None:
    """iMAML Figure 2b: oracle calls and peak live-tensor memory vs inner steps for maml, fomaml, truncated, imaml."""
    data = _ok(records, "live_peak_bytes")
    keep = ["maml (GD)", "fomaml (GD)", "truncated (GD)", "imaml (GD)"]
    data = data[(data["kappa"] == kappa) & data["variant"].isin(keep)].copy()
    if data.empty:
        return None
    # one curve per variant: the largest truncation and CG count measured at each K
    data = data.sort_values(["truncate", "cg_iters"], na_position="first").groupby(["variant", "inner_steps"]).tail(1)
    data["live_peak_MiB"] = data["live_peak_bytes"] / 2**20
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    palette = _palette(data["variant"].unique())
    sns.lineplot(data=data, x="inner_steps", y="oracle_calls", hue="variant", palette=palette, marker="o", ax=axes[0])
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="inner steps K",
        ylabel="oracle calls per task (gradients + HVPs)",
        title="Compute",
    )
    sns.lineplot(data=data, x="inner_steps", y="live_peak_MiB", hue="variant", palette=palette, marker="o", ax=axes[1])
    axes[1].set(
        xscale="log", yscale="log", xlabel="inner steps K", ylabel="peak live-tensor memory (MiB)", title="Memory"
    )
    fig.suptitle(f"Compute and memory vs inner steps (kappa = {kappa:g})")
    return fig


# the same marker and dash per algorithm in every panel
_MARKERS = {"maml": "s", "itd_bio": "X", "imaml": "o", "rm_metal": "P", "maml_checkpointed": "D"}
_DASHES = {"maml": (1, 1), "itd_bio": (4, 2), "imaml": "", "rm_metal": (2, 2), "maml_checkpointed": (3, 1, 1, 1)}


def _setting(problem: str, params) -> str:
    """A problem's label in figures: its name, and its formulation where it has one."""
    formulation = params.get("formulation") if isinstance(params, dict) else None
    return f"{problem} ({formulation})" if formulation else problem


def memory_vs_steps_bilevel(records: pd.DataFrame) -> plt.Figure | None:
    """RM-MetaL Figure 2: peak live-tensor memory vs inner steps for maml, itd_bio, imaml, rm_metal
    (and maml_checkpointed where measured).

    One panel per problem setting other than linear meta-regression (the quadratic bilevel problem, each
    formulation of a few-shot network).
    """
    data = _ok(records, "live_peak_bytes")
    data = data[(data["problem"] != "linear_meta_regression") & data["algorithm"].isin(list(_MARKERS))]
    if data.empty:
        return None
    data = data.assign(setting=[_setting(p, q) for p, q in zip(data["problem"], data["problem_params"])])
    data = data.groupby(["setting", "algorithm", "inner_steps"], as_index=False)["live_peak_bytes"].max()
    data["live_peak_MiB"] = data["live_peak_bytes"] / 2**20
    settings = sorted(data["setting"].unique())
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        part = data[data["setting"] == setting]
        sns.lineplot(
            data=part,
            x="inner_steps",
            y="live_peak_MiB",
            hue="algorithm",
            style="algorithm",  # maml and itd_bio coincide, as do imaml and rm_metal: markers keep both visible
            palette=_palette(part["algorithm"].unique()),
            markers={k: v for k, v in _MARKERS.items() if k in set(part["algorithm"])},
            dashes={k: v for k, v in _DASHES.items() if k in set(part["algorithm"])},
            markersize=8,
            alpha=0.8,
            ax=ax,
        )
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="inner steps K",
            ylabel="peak live-tensor memory (MiB)",
            title=f"Memory vs inner steps: {setting}",
        )
    fig.tight_layout()
    return fig


def least_compute_vs_kappa(best: pd.DataFrame, target: float) -> plt.Figure | None:
    """Least oracle calls reaching ``target`` error vs kappa, with each variant's fitted power law."""
    data = best[(best["target"] == target) & best["reached"]]
    if data.empty:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    palette = _palette(data["variant"].unique())
    sns.scatterplot(data=data, x="kappa", y="cost", hue="variant", style="variant", palette=palette, s=50, ax=ax)
    for variant, group in data[data["kappa"] >= 10].groupby("variant"):
        fit = fit_power_law(group["kappa"], group["cost"])
        if np.isfinite(fit.exponent):
            xs = np.geomspace(group["kappa"].min(), group["kappa"].max(), 20)
            ax.plot(
                xs,
                np.exp(fit.log_intercept) * xs**fit.exponent,
                color=palette[variant],
                lw=1,
                ls="--" if "Nesterov" in variant else "-",
            )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="condition number kappa",
        ylabel="least oracle calls per task",
        title=f"Compute to reach relative error {target:g}",
    )
    ax.legend(fontsize=7, title=None)
    return fig


def convergence(records: pd.DataFrame) -> plt.Figure | None:
    """F(theta_t) - F* over outer steps, against wall time and against oracle calls (training records)."""
    if "trajectory" not in records:
        return None
    runs = records[(records["status"] == "ok") & records["trajectory"].apply(lambda t: isinstance(t, dict))]
    rows = []
    for _, run in runs.iterrows():
        traj = run["trajectory"]
        label = f"{run['algorithm']} K={int(run['inner_steps'])}"
        for gap, seconds, calls in zip(traj["objective_gap"], traj["wall_time_s"], traj["oracle_calls"]):
            rows.append(
                {
                    "run": label,
                    "algorithm": run["algorithm"],
                    "problem": run["problem"],
                    "gap": gap,
                    "seconds": seconds,
                    "calls": calls,
                }
            )
    data = pd.DataFrame(rows)
    if data.empty:
        return None
    data = data[data["gap"].notna() & (data["gap"] > 0)]
    problems = sorted(data["problem"].unique())
    fig, axes = plt.subplots(len(problems), 2, figsize=(10, 3.6 * len(problems)), squeeze=False)
    palette = _palette(data["algorithm"].unique())
    for row, problem in enumerate(problems):
        part = data[data["problem"] == problem]
        for col, (x, xlabel) in enumerate(
            [("seconds", "hypergradient wall time (s)"), ("calls", "oracle calls per task")]
        ):
            sns.lineplot(
                data=part,
                x=x,
                y="gap",
                hue="algorithm",
                style="run",
                palette=palette,
                ax=axes[row][col],
                estimator=None,
                sort=False,
            )
            axes[row][col].set(yscale="log", xlabel=xlabel, ylabel="F(theta_t) - F*", title=problem)
            axes[row][col].legend(fontsize=6, title=None)
    fig.suptitle("Meta-training convergence (exact objective gap)")
    fig.tight_layout()
    return fig
