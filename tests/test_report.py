"""Reports: fits recover known laws, rendering survives failures, record text is escaped, and the figures show
every measured value (or say in their captions what they leave out)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from metabench.report import build_report, figures, fit_power_law, least_compute, memory_per_step, table1
from metabench.report.summary import summary_markdown
from metabench.results import SCHEMA_VERSION


def synthetic_table1(exponents: dict[str, float], noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """Records whose error after K steps is exp(-K / kappa^b): the least K reaching delta is kappa^b log(1/delta)."""
    rng = np.random.default_rng(seed)
    rows = []
    for variant, b in exponents.items():
        algorithm, solver = variant.split(" ")[0], "nesterov" if "Nesterov" in variant else "gd"
        for kappa in (1.0, 10.0, 100.0, 1000.0, 10000.0):
            for K in np.unique(np.geomspace(1, 10**5, 200).astype(int)):
                rate = kappa**b * math.exp(noise * rng.standard_normal())
                rows.append(
                    {
                        "status": "ok",
                        "sweep": "table1",
                        "problem": "linear_meta_regression",
                        "algorithm": algorithm,
                        "inner_solver": solver,
                        "kappa": kappa,
                        "inner_steps": int(K),
                        "truncate": None,
                        "cg_iters": None,
                        "rel_error_exact": math.exp(-K / rate),
                        "inner_grads": int(K),
                        "outer_grads": 1,
                        "hvps": int(K),
                        "jvps": 0,
                        "task_batch": 1,
                        "time_median_s": 1e-4 * K,
                        "live_peak_bytes": 1000 + 250 * K if algorithm == "maml" else 3000,
                        "inner_grad_peak_bytes": 500,
                    }
                )
    return pd.DataFrame(rows)


class TestFits:
    def test_power_law_is_exact_on_exact_data(self):
        x = np.array([10.0, 100.0, 1000.0, 1e4])
        fit = fit_power_law(x, 3.0 * x**0.7)
        assert fit.exponent == pytest.approx(0.7, abs=1e-12) and fit.n_points == 4
        assert fit.ci_low == pytest.approx(0.7, abs=1e-6) and fit.ci_high == pytest.approx(0.7, abs=1e-6)
        assert math.exp(fit.log_intercept) == pytest.approx(3.0)

    def test_two_points_have_no_interval_and_one_point_no_fit(self):
        two = fit_power_law([10, 100], [1, 10])
        assert two.exponent == pytest.approx(1.0) and math.isnan(two.ci_low)
        assert math.isnan(fit_power_law([10], [1]).exponent)
        # two points give no interval, so no verdict either way (fitting.verdict: "inconclusive")
        assert two.agrees_with(1.0) is None and two.agrees_with(1.5) is None and two.agrees_with(None) is None

    def test_noisy_fit_interval_covers_the_truth(self):
        rng = np.random.default_rng(1)
        x = np.geomspace(10, 1e4, 12)
        fit = fit_power_law(x, x**0.5 * np.exp(0.1 * rng.standard_normal(12)))
        assert fit.ci_low < 0.5 < fit.ci_high and fit.ci_high - fit.ci_low < 0.2

    def test_table1_recovers_known_exponents(self):
        records = synthetic_table1({"maml (GD)": 1.0, "maml (Nesterov)": 0.5, "imaml (Nesterov)": 0.5})
        fits = table1(records, targets=(0.1, 0.01))
        for variant, b in (("maml (GD)", 1.0), ("maml (Nesterov)", 0.5), ("imaml (Nesterov)", 0.5)):
            for _, row in fits[fits["variant"] == variant].iterrows():
                assert row["exponent"] == pytest.approx(b, abs=0.03), (variant, row["target"])
                assert row["n_points"] == 4 and row["agrees"] is True

    def test_table1_flags_a_disagreement(self):
        fits = table1(synthetic_table1({"maml (Nesterov)": 1.0}), targets=(0.1,))
        row = fits.iloc[0]
        assert row["exponent"] == pytest.approx(1.0, abs=0.03) and row["agrees"] is not None and not row["agrees"]

    def test_unreached_target_keeps_its_error_floor(self):
        records = synthetic_table1({"maml (GD)": 1.0})
        records = records[records["inner_steps"] <= 100]  # too few steps for kappa = 1e4
        best = least_compute(records, targets=(0.01,))
        worst = best[best["kappa"] == 1e4].iloc[0]
        assert not worst["reached"] and math.isnan(worst["cost"])
        largest_k = records.loc[records["kappa"] == 1e4, "inner_steps"].max()
        assert worst["error_floor"] == pytest.approx(math.exp(-largest_k / 1e4))
        row = table1(records, targets=(0.01,)).iloc[0]
        assert 10000.0 in row["kappas_missed"]

    def test_memory_slope_in_units_of_mem_grad(self):
        memory = memory_per_step(synthetic_table1({"maml (GD)": 1.0, "imaml (GD)": 1.0})).set_index("variant")
        assert memory.loc["maml (GD)", "slope_bytes_per_step"] == pytest.approx(250.0)
        assert memory.loc["maml (GD)", "slope_over_mem_grad"] == pytest.approx(0.5)
        assert memory.loc["imaml (GD)", "slope_bytes_per_step"] == pytest.approx(0.0, abs=1e-9)


def failing_records() -> pd.DataFrame:
    ok = synthetic_table1({"maml (GD)": 1.0, "imaml (GD)": 1.0}).iloc[::40]
    bad = pd.DataFrame(
        [
            {
                "status": "oom",
                "sweep": "table1",
                "problem": "linear_meta_regression",
                "algorithm": "maml",
                "inner_steps": 100000,
                "kappa": 10.0,
                "error": "OutOfMemoryError: CUDA out of memory",
            },
            {
                "status": "failed",
                "sweep": "table1",
                "problem": "linear_meta_regression",
                "algorithm": "imaml",
                "inner_steps": 3,
                "kappa": 10.0,
                "error": "<script>alert('x')</script> | pipe & more",
            },
            {
                "status": "diverged",
                "sweep": "table1",
                "problem": "linear_meta_regression",
                "algorithm": "fomaml",
                "inner_steps": 3,
                "kappa": 10.0,
                "error": "DivergenceError: inner solver diverged",
            },
        ]
    )
    return pd.concat([ok, bad], ignore_index=True)


def test_report_renders_with_failed_and_oom_cases(tmp_path):
    paths = build_report(failing_records(), tmp_path)
    text = paths["markdown"].read_text()
    assert "iMAML Table 1, measured" in text and "Cases that did not end ok" in text
    assert "| oom |" in text and "| failed |" in text and "| diverged |" in text
    assert paths["html"].read_text().startswith("<!DOCTYPE html>")


def test_html_and_markdown_escape_record_text(tmp_path):
    paths = build_report(failing_records(), tmp_path)
    page = paths["html"].read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "pipe &amp; more" in page
    markdown = paths["markdown"].read_text()
    assert "\\| pipe" in markdown  # a | inside a cell does not split the table


def test_report_of_no_records(tmp_path):
    paths = build_report(pd.DataFrame(columns=["status", "sweep"]), tmp_path)
    assert "No records." in paths["markdown"].read_text()


# --- the figures show their data ------------------------------------------------------------------------------

LINEAR = "linear_meta_regression"


def sweep_records(
    kappas=(10.0, 1000.0), memory_grows_with_kappa: bool = False, training: bool = False, sweep: str = "grid"
) -> list[dict]:
    """Store-ready records of a small grid: linear meta-regression (maml, imaml CG 5/20, truncated T 1/10, fomaml)
    and the quadratic bilevel problem (maml = itd_bio and imaml = rm_metal in memory), over ``kappas``.

    Every measured value differs by kappa (errors) or by nothing but the case (memory, calls), so a figure that
    merges or drops something can be caught.
    """
    rows: list[dict] = []

    def add(**fields):
        problem = fields.get("problem", LINEAR)
        record = {
            "schema_version": SCHEMA_VERSION,
            "case_id": f"{sweep}-{len(rows):04d}",
            "sweep": sweep,
            "status": "ok",
            "mode": "hypergradient",
            "problem": problem,
            "problem_params": {"kappa": fields["kappa"], "dim": 8, "n_tasks": 2},
            "inner_solver": "gd",
            "truncate": None,
            "cg_iters": None,
            "neumann_iters": None,
            "task_batch": 1,
            "outer_grads": 1,
            "jvps": 0,
            "truth": "exact",
            "truth_status": "ok",
            **fields,
        }
        record["options"] = {"inner_steps": record["inner_steps"], "inner_lr": 0.1}
        rows.append(record)

    for kappa in kappas:
        extra = int(kappa) if memory_grows_with_kappa else 0
        for K in (1, 3, 10, 30):
            decay = math.exp(-K / kappa**0.5)
            add(algorithm="maml", kappa=kappa, inner_steps=K, rel_error_exact=decay, inner_grads=K, hvps=K,
                live_peak_bytes=1000 + 256 * K + extra)  # fmt: skip
            add(algorithm="fomaml", kappa=kappa, inner_steps=K, rel_error_exact=0.5 + decay / 10, inner_grads=K,
                hvps=0, live_peak_bytes=900)  # fmt: skip
            for cg in (5, 20):
                add(algorithm="imaml", kappa=kappa, inner_steps=K, cg_iters=cg, inner_grads=K, hvps=cg,
                    rel_error_exact=decay + 1.0 / (cg * kappa), live_peak_bytes=3000)  # fmt: skip
            for T in (1, 10):
                if T <= K:
                    add(algorithm="truncated", kappa=kappa, inner_steps=K, truncate=T, inner_grads=K, hvps=T,
                        rel_error_exact=decay + 0.1 / T, live_peak_bytes=1000 + 256 * T)  # fmt: skip
        for K in (1, 10, 100):
            for algorithm in ("maml", "itd_bio"):
                add(algorithm=algorithm, problem="quadratic_bilevel", kappa=kappa, inner_steps=K, inner_grads=K,
                    hvps=K, rel_error_exact=0.9 ** (K / kappa), live_peak_bytes=2048 + 300 * K)  # fmt: skip
            for algorithm in ("imaml", "rm_metal"):
                add(algorithm=algorithm, problem="quadratic_bilevel", kappa=kappa, inner_steps=K, cg_iters=5,
                    inner_grads=K, hvps=5, rel_error_exact=0.5 ** (K / kappa), live_peak_bytes=2600)  # fmt: skip
    if training:
        for algorithm, K in (("imaml", 5), ("rm_metal", 5), ("itd_bio", 20)):
            gaps = [10.0 * 0.9**t for t in range(11)]
            add(algorithm=algorithm, problem="quadratic_bilevel", kappa=100.0, inner_steps=K, mode="train",
                cg_iters=5 if algorithm != "itd_bio" else None, outer_steps=10,
                trajectory={"objective_gap": gaps, "wall_time_s": [0.01 * t for t in range(11)],
                            "oracle_calls": [(K + 6) * t for t in range(11)]})  # fmt: skip
    return rows


def drawn_points(fig) -> set[tuple[str, str, float, float]]:
    """(panel title, curve, x, y) of every labelled line of a figure."""
    points = set()
    for ax in fig.axes:
        for line in ax.lines:
            if not line.get_label().startswith("_"):
                for x, y in zip(line.get_xdata(), line.get_ydata()):
                    points.add((ax.get_title(), line.get_label(), float(x), float(y)))
    return points


def curves_by_panel(fig) -> dict[str, set[str]]:
    return {
        ax.get_title(): {ln.get_label() for ln in ax.lines if not ln.get_label().startswith("_")} for ax in fig.axes
    }


def legend_is_outside(fig) -> bool:
    fig.canvas.draw()
    (legend,) = fig.legends
    right_of_data = max(ax.get_window_extent().x1 for ax in fig.axes)
    return legend.get_window_extent().x0 >= right_of_data


@pytest.fixture
def close_figures():
    yield
    plt.close("all")


@pytest.mark.usefixtures("close_figures")
class TestFiguresShowTheirData:
    def test_error_figure_has_a_panel_per_kappa_and_a_curve_per_cg_count(self):
        records = pd.DataFrame(sweep_records(kappas=(10.0, 1000.0)))
        plot = figures.error_vs_steps(records)
        panels = curves_by_panel(plot.figure)
        assert set(panels) == {"kappa = 10", "kappa = 1000"}
        assert all(curves == {"maml", "imaml, CG 5", "imaml, CG 20"} for curves in panels.values())
        points = drawn_points(plot.figure)
        for _, r in records[(records["problem"] == LINEAR) & records["algorithm"].isin(["maml", "imaml"])].iterrows():
            curve = "maml" if r["algorithm"] == "maml" else f"imaml, CG {int(r['cg_iters'])}"
            point = (f"kappa = {r['kappa']:g}", curve, float(r["inner_steps"]), r["rel_error_exact"])
            assert point in points, point
        assert "Not drawn here: truncated and fomaml" in plot.caption
        assert legend_is_outside(plot.figure)

    def test_error_figure_ticks_at_the_measured_steps(self):
        plot = figures.error_vs_steps(pd.DataFrame(sweep_records()))
        plot.figure.canvas.draw()
        ax = plot.figure.axes[0]
        assert list(ax.get_xticks()) == [1, 3, 10, 30]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "3", "10", "30"]

    def test_nesterov_records_get_their_own_row(self):
        rows = sweep_records(kappas=(10.0,))
        maml = [r for r in rows if r["algorithm"] == "maml" and r["problem"] == LINEAR]
        nesterov = [
            dict(r, case_id=r["case_id"] + "n", inner_solver="nesterov", rel_error_exact=r["rel_error_exact"] / 3)
            for r in maml
        ]
        plot = figures.error_vs_steps(pd.DataFrame(rows + nesterov))
        assert set(curves_by_panel(plot.figure)) == {
            "GD inner solver | kappa = 10",
            "Nesterov inner solver | kappa = 10",
        }
        assert "rows by inner solver" in plot.caption

    def test_compute_and_memory_draw_every_truncation_and_cg_count_and_say_kappa_was_checked(self):
        records = pd.DataFrame(sweep_records(kappas=(10.0, 1000.0)))
        plot = figures.compute_memory_vs_steps(records)
        panels = curves_by_panel(plot.figure)
        assert set(panels) == {"compute", "memory"}
        expected = {"maml", "fomaml", "imaml, CG 5", "imaml, CG 20", "truncated, T = 1", "truncated, T = 10"}
        assert panels["compute"] == expected and panels["memory"] == expected
        points = drawn_points(plot.figure)
        assert ("memory", "truncated, T = 10", 30.0, 1000.0 + 256 * 10) in points
        assert ("compute", "imaml, CG 20", 3.0, 3 + 1 + 20) in points and ("compute", "imaml, CG 5", 3.0, 9) in points
        assert "the values at kappa = 10, 1000 agree within 1e-12 relative" in plot.caption
        assert "imaml, CG 5 = imaml, CG 20 (in memory)." in plot.caption  # their calls differ
        assert legend_is_outside(plot.figure)

    def test_compute_and_memory_get_a_row_per_kappa_where_they_differ(self):
        plot = figures.compute_memory_vs_steps(pd.DataFrame(sweep_records(memory_grows_with_kappa=True)))
        panels = curves_by_panel(plot.figure)
        assert set(panels) == {f"kappa = {k} | {m}" for k in (10, 1000) for m in ("compute", "memory")}
        points = drawn_points(plot.figure)
        assert ("kappa = 1000 | memory", "maml", 3.0, 1000 + 256 * 3 + 1000) in points
        assert ("kappa = 10 | memory", "maml", 3.0, 1000 + 256 * 3 + 10) in points
        assert "do not depend on kappa" not in plot.caption and "rows by kappa" in plot.caption

    def test_memory_axes_read_in_binary_units(self):
        plot = figures.compute_memory_vs_steps(pd.DataFrame(sweep_records()))
        plot.figure.canvas.draw()
        memory = next(ax for ax in plot.figure.axes if ax.get_title() == "memory")
        labels = [t.get_text() for t in memory.get_yticklabels() if t.get_text()]
        assert labels and all(label.endswith((" B", " KiB", " MiB", " GiB")) for label in labels), labels
        assert [figures.format_bytes(v) for v in (512, 4096, 1.5 * 2**20, 2**31)] == [
            "512 B",
            "4 KiB",
            "1.5 MiB",
            "2 GiB",
        ]

    def test_coinciding_curves_are_named_only_when_they_agree(self):
        records = pd.DataFrame(sweep_records())
        plot = figures.memory_vs_steps_bilevel(records)
        assert curves_by_panel(plot.figure) == {
            "quadratic_bilevel": {"maml", "itd_bio", "imaml, CG 5", "rm_metal, CG 5"}
        }
        assert "maml = itd_bio" in plot.caption and "imaml, CG 5 = rm_metal, CG 5" in plot.caption
        markers = {ln.get_label(): ln.get_marker() for ln in plot.figure.axes[0].lines}
        assert markers["maml"] != markers["itd_bio"] and markers["imaml, CG 5"] != markers["rm_metal, CG 5"]
        assert "the values at kappa = 10, 1000 agree" in plot.caption
        off = records["algorithm"].eq("itd_bio")
        records["live_peak_bytes"] = (
            records["live_peak_bytes"].astype(float).where(~off, records["live_peak_bytes"] * (1 + 1e-9))
        )
        plot = figures.memory_vs_steps_bilevel(records)
        assert "maml = itd_bio" not in plot.caption and "imaml, CG 5 = rm_metal, CG 5" in plot.caption

    def test_bilevel_memory_gets_a_column_per_kappa_where_it_differs(self):
        rows = sweep_records()
        for r in rows:
            if r["problem"] != LINEAR and r["algorithm"] == "itd_bio":
                r["live_peak_bytes"] += int(r["kappa"])
        plot = figures.memory_vs_steps_bilevel(pd.DataFrame(rows))
        assert set(curves_by_panel(plot.figure)) == {
            "quadratic_bilevel | kappa = 10",
            "quadratic_bilevel | kappa = 1000",
        }
        assert ("quadratic_bilevel | kappa = 1000", "itd_bio", 10.0, 2048 + 3000 + 1000) in drawn_points(plot.figure)

    def test_records_that_differ_only_in_a_setting_are_told_apart(self):
        rows = sweep_records(kappas=(10.0,))
        wider = [dict(r, case_id=r["case_id"] + "w", problem_params={**r["problem_params"], "dim": 16},
                      rel_error_exact=r["rel_error_exact"] / 2) for r in rows]  # fmt: skip
        plot = figures.error_vs_steps(pd.DataFrame(rows + wider))
        assert set(curves_by_panel(plot.figure)) == {"dim=8 | kappa = 10", "dim=16 | kappa = 10"}
        damped = [
            dict(r, case_id=r["case_id"] + "d", options={**r["options"], "damping": 50.0}, live_peak_bytes=3008)
            for r in rows
            if r["algorithm"] == "imaml"
        ]
        plot = figures.memory_vs_steps_bilevel(pd.DataFrame(rows + damped))
        assert "imaml, CG 5, damping=50" in curves_by_panel(plot.figure)["quadratic_bilevel"]

    def test_captions_name_what_was_left_out(self):
        rows = sweep_records()
        rows[0]["status"], rows[0]["error"] = "oom", "out of memory"
        rows[1]["live_peak_bytes"] = None
        plot = figures.compute_memory_vs_steps(pd.DataFrame(rows))
        assert "Not drawn: 1 record that did not end ok (oom 1" in plot.caption
        assert "Not drawn: 1 ok record without a memory measure" in plot.caption

    def test_least_compute_has_a_panel_per_target_and_names_what_never_reached_it(self):
        records = synthetic_table1({"maml (GD)": 1.0, "imaml (GD)": 1.0})
        records = records[records["inner_steps"] <= 3000]
        plot = figures.least_compute_vs_kappa(records, (0.5, 0.1, 0.01))
        panels = curves_by_panel(plot.figure)
        assert set(panels) == {"target error 0.5", "target error 0.1", "target error 0.01"}
        # exp(-K / kappa) with K <= 3000: 0.5 and 0.1 missed at kappa 1e4 only, 0.01 at 1e3 too
        assert "maml (GD): kappa 10000 (targets 0.5 and 0.1), kappa 1000 and 10000 (target 0.01)" in plot.caption
        assert "fit: maml (GD)" in {ln.get_label() for ax in plot.figure.axes for ln in ax.lines}
        assert legend_is_outside(plot.figure)

    def test_convergence_draws_each_run_with_its_legend_outside(self):
        plot = figures.convergence(pd.DataFrame(sweep_records(training=True)))
        panels = curves_by_panel(plot.figure)
        assert set(panels) == {"quadratic_bilevel | hypergradient wall time", "quadratic_bilevel | oracle calls"}
        assert all(c == {"imaml, K = 5, CG 5", "rm_metal, K = 5, CG 5", "itd_bio, K = 20"} for c in panels.values())
        assert legend_is_outside(plot.figure)

    def test_training_runs_stay_out_of_the_hypergradient_figures(self):
        plain = figures.compute_memory_vs_steps(pd.DataFrame(sweep_records()))
        with_runs = figures.compute_memory_vs_steps(pd.DataFrame(sweep_records(training=True)))
        assert with_runs.caption == plain.caption


# --- the report shows its tables, and its progress -------------------------------------------------------------


def test_html_embeds_the_results_tables_and_both_link_the_summary(tmp_path):
    records = pd.DataFrame(sweep_records(kappas=(10.0,)))
    records.loc[0, "algorithm"] = "<b>maml</b>"
    paths = build_report(records, tmp_path, progress=False)
    page, markdown = paths["html"].read_text(), paths["markdown"].read_text()
    assert "<h2>Results tables</h2>" in page and "<h3>Sweep grid</h3>" in page
    assert '<a href="summary.md">summary.md</a>' in page and "[summary.md](summary.md)" in markdown
    assert "<td>&lt;b&gt;maml&lt;/b&gt;</td>" in page and "<b>maml</b>" not in page
    summary_rows = {line for line in paths["summary"].read_text().splitlines() if line.startswith("| ")}
    report_rows = {line for line in markdown.splitlines() if line.startswith("| ")}
    assert summary_rows <= report_rows  # every summary table is in the report too


def test_summary_shows_the_problem_and_where_present_the_truth():
    records = pd.DataFrame(sweep_records(kappas=(10.0,)))
    text = summary_markdown(records)
    assert "| algorithm | problem |" in text and "| maml | linear\\_meta\\_regression |" in text
    assert "rel. error (reference)" not in text and "| truth |" not in text
    records["rel_error_reference"] = [None] * (len(records) - 1) + [0.25]
    records["truth_status"] = ["ok"] * (len(records) - 1) + ["reference: inner solve did not converge"]
    text = summary_markdown(records)
    assert "| rel. error (exact) | rel. error (reference) | truth |" in text
    assert "| 2.50e-01 | reference: inner solve did not converge |" in text


def test_progress_bar_only_when_asked_or_on_a_terminal(tmp_path, capsys):
    records = pd.DataFrame(sweep_records(kappas=(10.0,)))
    build_report(records, tmp_path / "a", title="t", progress=False)
    build_report(records, tmp_path / "b")  # stderr is not a terminal under pytest: no bar
    assert capsys.readouterr().err == ""
    build_report(records, tmp_path / "c", progress=True)
    err = capsys.readouterr().err
    assert "report" in err and "%" in err
