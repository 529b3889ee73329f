"""The meta-training-to-accuracy part of a report: RM-MetaL's Table 1 / Table 2 measures and iMAML's Table 2 beside.

From the records of few-shot training cases (``metabench.meta_train``; ``val_accuracy_best`` set), one table per
task source and episode shape (ways, shots). Per run: the best and final validation accuracy, the test accuracy
after ``fine_tune_steps`` of adaptation on new episodes (RM-MetaL's Table 1 measure), the **time to 0.9 x best**
(RM-MetaL's Table 2 measure: training seconds until the run's validation accuracy first reaches 0.9 times the
best validation accuracy of any run in the table; "-" if it never does), the peak live-tensor memory of one outer
step, the process RSS peak, and oracle calls per outer step and task. Where iMAML's paper has a number for the
method and episode shape (its Table 2, real Omniglot), it stands beside; RM-MetaL's own numbers are not
transcribed (the paper is not among this project's sources), so its rows have none.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd

from metabench.meta_train import time_to_fraction
from metabench.report.document import Figure, Heading, Section, Table, Text, fmt_number

__all__ = ["IMAML_TABLE2", "accuracy_section", "accuracy_rows"]

#: iMAML (Rajeswaran et al. 2019), Table 2: test accuracy (%) on real Omniglot, by (method, ways, shots).
#: MAML and first-order MAML as reported by Finn et al., Reptile by Nichol et al.; iMAML GD uses 16 (5-way) and
#: 25 (20-way) inner steps, Hessian-free 5 CG steps a direction with a line search; lam = 2, 5 CG steps.
IMAML_TABLE2 = {
    ("maml", 5, 1): 98.7,
    ("maml", 5, 5): 99.9,
    ("maml", 20, 1): 95.8,
    ("maml", 20, 5): 98.9,
    ("fomaml", 5, 1): 98.3,
    ("fomaml", 5, 5): 99.2,
    ("fomaml", 20, 1): 89.4,
    ("fomaml", 20, 5): 97.9,
    ("reptile", 5, 1): 97.68,
    ("reptile", 5, 5): 99.48,
    ("reptile", 20, 1): 89.43,
    ("reptile", 20, 5): 97.12,
    ("imaml gd", 5, 1): 99.16,
    ("imaml gd", 5, 5): 99.67,
    ("imaml gd", 20, 1): 94.46,
    ("imaml gd", 20, 5): 98.69,
    ("imaml newton_cg", 5, 1): 99.50,
    ("imaml newton_cg", 5, 5): 99.74,
    ("imaml newton_cg", 20, 1): 96.18,
    ("imaml newton_cg", 20, 5): 99.14,
}

FRACTION = 0.9
_MIB = 2**20


def _params(record) -> dict:
    params = record.get("problem_params")
    return params if isinstance(params, dict) else {}


def _method(record) -> str:
    """The method's name as the tables print it: imaml with its inner solver, the rest by name."""
    name = record["algorithm"]
    if name == "imaml":
        return f"imaml {record.get('inner_solver') or 'gd'}"
    return name


def _runs(records: pd.DataFrame) -> pd.DataFrame:
    if "val_accuracy_best" not in records or "trajectory" not in records:
        return records.iloc[0:0]
    keep = records["trajectory"].apply(lambda t: isinstance(t, dict) and "val_accuracy" in t)
    return records[keep]


def _group_key(record) -> tuple:
    params = _params(record)
    source = record.get("task_source") if isinstance(record.get("task_source"), dict) else {}
    return (source.get("task_source") or params.get("dataset"), params.get("ways"), params.get("shots"))


def accuracy_rows(records: pd.DataFrame) -> dict[tuple, list[dict]]:
    """Per (task source, ways, shots): one dict per run with the table's measures (time to 0.9 x best included)."""
    groups: dict[tuple, list[dict]] = {}
    for _, record in _runs(records).iterrows():
        groups.setdefault(_group_key(record), []).append(record)
    out = {}
    for key, runs in groups.items():
        best = max((r["val_accuracy_best"] for r in runs if _finite(r.get("val_accuracy_best"))), default=None)
        rows = []
        for r in runs:
            traj = r["trajectory"]
            steps = r.get("outer_steps") or 0
            calls = traj["oracle_calls"][-1] / steps if steps and traj.get("oracle_calls") else None
            target = None if best is None else FRACTION * best
            reach = None
            if target is not None:
                reach = time_to_fraction(traj["eval_wall_time_s"], traj["val_accuracy"], target)
            paper = IMAML_TABLE2.get((_method(r), key[1], key[2])) if key[0] == "omniglot_like" else None
            rows.append(
                {
                    "method": _method(r),
                    "formulation": _params(r).get("formulation"),
                    "features": r.get("features"),
                    "K": r.get("inner_steps"),
                    "lam": _params(r).get("lam"),
                    "status": r["status"],
                    "val_best": r.get("val_accuracy_best"),
                    "val_final": r.get("val_accuracy_final"),
                    "test": r.get("test_accuracy"),
                    "time_to_target": reach,
                    "train_s": r.get("total_wall_time_s"),
                    "live_mib": _mib(r.get("live_peak_bytes")),
                    "rss_mib": _mib(r.get("rss_peak_bytes")),
                    "calls_per_step": calls,
                    "paper": paper,
                    "fine_tune_steps": r.get("fine_tune_steps"),
                    "cg_truncated": r.get("cg_truncated_steps"),
                    "outer_steps": steps,
                    "error": r.get("error"),
                }
            )
        out[key] = rows
    return out


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _mib(value):
    return value / _MIB if _finite(value) else None


def _pct(value) -> str:
    return fmt_number(100.0 * value, 3) if _finite(value) else "-"


def _curves(records: pd.DataFrame, key: tuple, fig_dir, name: str) -> Figure | None:
    runs = [r for _, r in _runs(records).iterrows() if _group_key(r) == key]
    if not runs:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    for r in runs:
        traj = r["trajectory"]
        acc = [None if a is None else 100 * a for a in traj["val_accuracy"]]
        label = _method(r) + ("" if r["status"] == "ok" else f" ({r['status']})")
        axes[0].plot(traj["eval_step"], acc, marker="o", markersize=3, label=label)
        axes[1].plot(traj["eval_wall_time_s"], acc, marker="o", markersize=3, label=label)
    axes[0].set_xlabel("outer step")
    axes[1].set_xlabel("training seconds (validation excluded)")
    axes[0].set_ylabel("validation accuracy (%)")
    axes[1].legend(fontsize=7, loc="lower right")
    for ax in axes:
        ax.grid(alpha=0.3)
    from metabench.report import figures

    caption = (
        f"Validation accuracy of each run on {key[0]} ({key[1]}-way {key[2]}-shot), against outer steps and against "
        "training seconds."
    )
    return Figure(figures.save(fig, fig_dir, name), caption)


def accuracy_section(records: pd.DataFrame, fig_dir=None) -> Section | None:
    """The report section (None when the records hold no few-shot training run)."""
    groups = accuracy_rows(records)
    if not groups:
        return None
    section = Section("Meta-training to accuracy")
    section.blocks.append(
        'Few-shot training runs (`mode = "train"`): fresh episodes of the task source\'s train split every outer '
        "step, validation accuracy on fixed episodes of its val split, test accuracy on new episodes of its test "
        "split after fine-tuning. **time to 0.9 x best** is RM-MetaL's Table 2 measure: the training seconds until "
        "a run's validation accuracy first reaches 0.9 times the best validation accuracy of any run in its table "
        "(validation itself is not counted). **test** is RM-MetaL's Table 1 measure. Memory: the peak live-tensor "
        "bytes of one outer step (exact) and the process RSS peak (sampled). Where iMAML's Table 2 has the method "
        "and episode shape, its number (real Omniglot, 64-filter nets trained for tens of thousands of outer steps "
        "on GPUs) stands beside; the measured runs use generated Omniglot-shaped characters or scikit-learn's 8x8 "
        "digits, smaller nets and a few hundred outer steps on a CPU, so only the ordering and the cost columns "
        "are comparable, not the accuracies. RM-MetaL's own numbers are not transcribed here (the paper is not "
        "among this project's sources). **steps where CG met p'Hp <= 0** counts the outer steps whose linear solve met "
        "non-positive curvature: `cg_breakdown = 'stop'` truncates CG there, `'continue'` goes on as iMAML's "
        "released code does; with the default `'raise'` such a run ends `failed` at that step. **features**: "
        "`once` where the bilevel formulation's head problem ran on features computed once per task, `-` where "
        "the option does not apply."
    )
    header = [
        "method",
        "formulation",
        "features",
        "K",
        "lam",
        "status",
        "best val %",
        "final val %",
        "test % (fine-tuned)",
        "time to 0.9 x best (s)",
        "training s",
        "peak live MiB (1 step)",
        "RSS peak MiB",
        "oracle calls / step / task",
        "steps where CG met p'Hp <= 0",
        "iMAML Table 2 %",
    ]
    for index, (key, rows) in enumerate(sorted(groups.items(), key=lambda kv: tuple(str(k) for k in kv[0]))):
        source, ways, shots = key
        section.blocks.append(Heading(f"{source}: {ways}-way {shots}-shot"))
        best = max((r["val_best"] for r in rows if _finite(r["val_best"])), default=None)
        steps = sorted({r["outer_steps"] for r in rows})
        tune = sorted({r["fine_tune_steps"] for r in rows if r["fine_tune_steps"] is not None})
        section.blocks.append(
            Text(
                "{n} runs of {steps} outer steps; best validation accuracy {best} %, so the target is {target} %; "
                "test accuracy after {tune} fine-tuning steps.",
                {
                    "n": len(rows),
                    "steps": ", ".join(str(s) for s in steps),
                    "best": _pct(best),
                    "target": _pct(None if best is None else FRACTION * best),
                    "tune": ", ".join(str(t) for t in tune) or "-",
                },
            )
        )
        table = [
            [
                r["method"],
                fmt_number(r["formulation"]),
                fmt_number(r["features"]),
                fmt_number(r["K"]),
                fmt_number(r["lam"]),
                r["status"],
                _pct(r["val_best"]),
                _pct(r["val_final"]),
                _pct(r["test"]),
                fmt_number(r["time_to_target"]),
                fmt_number(r["train_s"]),
                fmt_number(r["live_mib"]),
                fmt_number(r["rss_mib"]),
                fmt_number(r["calls_per_step"]),
                fmt_number(r["cg_truncated"]),
                fmt_number(r["paper"]),
            ]
            for r in rows
        ]
        section.blocks.append(Table(header, table))
        failed = [r for r in rows if r["status"] != "ok"]
        for r in failed:
            section.blocks.append(Text("{method} ended {status}: {error}", dict(r)))
        if fig_dir is not None:
            figure = _curves(records, key, fig_dir, f"accuracy_{index}")
            if figure is not None:
                section.blocks.append(figure)
    return section
