"""Reports: fits recover known laws, rendering survives failures, and record text is escaped."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from metabench.report import build_report, fit_power_law, least_compute, memory_per_step, table1


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
        assert two.agrees_with(1.1) and not two.agrees_with(1.5) and two.agrees_with(None) is None

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
