"""Property tests of the public API on arbitrary input: a clear error or a correct result, never garbage.

- ``get_algorithm`` with any option value either builds or raises TypeError/ValueError naming the option;
- ``run_case`` on any case a sweep can express returns a record with a known status and never raises;
  a record stored as ``ok`` holds finite numbers, and on the closed-form problems its gradient is what
  the algorithm computes (``rel_error_algorithm`` far below 1);
- a store with arbitrary garbage between its lines still gives back every record, once.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metabench
from metabench.results import STATUSES, ResultsStore, read_records
from metabench.sweep import Sweep, run_case

SETTINGS = settings(
    max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 50),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["auto", "gd", "nesterov", "", "x", "memory"]),
    st.lists(st.integers(0, 3), max_size=2),
)
OPTION_NAMES = sorted(metabench.options.OPTIONS)


@SETTINGS
@given(name=st.sampled_from(metabench.available_algorithms()), option=st.sampled_from(OPTION_NAMES), value=ANY_VALUE)
def test_get_algorithm_builds_or_names_the_option(name, option, value):
    try:
        algorithm = metabench.get_algorithm(name, **{option: value})
    except (TypeError, ValueError) as err:
        assert option in str(err) or "inner_lr" in str(err)  # a solver built from the options names inner_lr
        return
    assert algorithm.options[option] == value or option in ("inner_solver", "linear_solver")


TINY = {"n_tasks": 2, "min_run_time": 0.001, "instruments": ["memory"]}
LINEAR = {"problem": "linear_meta_regression", "dim": 3, "n_train": 5, "n_val": 3}
BILEVEL = {"problem": "quadratic_bilevel", "p": 2, "q": 3}


@st.composite
def cases(draw):
    """One case of a sweep: each parameter usually a good value, sometimes one users get wrong."""

    def pick(good, bad):
        return draw(bad if draw(st.integers(0, 9)) == 0 else good)

    problem = draw(st.sampled_from([LINEAR, BILEVEL]))
    flat = {
        **TINY,
        **problem,
        "algorithm": draw(st.sampled_from(metabench.available_algorithms())),
        "kappa": pick(st.floats(1.0, 1e6), st.sampled_from([1e18, math.inf, -1.0, 0.5])),
        "inner_steps": pick(st.integers(0, 30), st.sampled_from([-1, 2.5, True, None])),
        "inner_lr": pick(st.sampled_from(["auto", 0.05, 0.5, 3.0, 50.0]), st.sampled_from([0.0, -1.0, math.nan, "x"])),
        "seed": pick(st.integers(0, 3), st.sampled_from([-1, 1.5, True, "0"])),
        "threads": pick(st.sampled_from([None, 1]), st.sampled_from([0, -2, 1.0])),
    }
    if problem is LINEAR:
        flat["lam"] = pick(st.sampled_from([0.0, 0.5, 1.0]), st.sampled_from([1e308, -1.0, math.nan]))
    else:
        flat["rho"] = 0.1
    for option, good, bad in (
        ("cg_iters", st.integers(0, 6), st.sampled_from([-1, 2.0])),
        ("cg_tol", st.sampled_from([0.0, 1e-8]), st.sampled_from([1e200, -1.0])),
        ("truncate", st.integers(1, 4), st.sampled_from([0, -1])),
        ("neumann_iters", st.integers(0, 20), st.sampled_from([-1])),
        ("damping", st.sampled_from([0.0, 1.0]), st.sampled_from([-1.0, math.inf])),
    ):
        if draw(st.booleans()):
            flat[option] = pick(good, bad)
    return flat


@SETTINGS
@given(flat=cases())
def test_any_case_becomes_a_record_with_a_status_and_ok_means_right(flat):
    try:
        expanded = Sweep(name="fuzz", grid=[{k: [v] for k, v in flat.items()}]).cases()
    except ValueError:
        return  # refused as a sweep (e.g. an option no algorithm takes): a clear error before anything runs
    for case in expanded:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            record = run_case(case)
        assert record["status"] in STATUSES, record
        assert record["error"] is None if record["status"] == "ok" else bool(record["error"])
        if record["status"] != "ok":
            continue
        for key in ("grad_norm", "rel_error_exact", "rel_error_algorithm", "live_peak_bytes"):
            value = record.get(key)
            assert value is None or math.isfinite(value), (key, value, case)
        if record["rel_error_algorithm"] is not None:  # the closed form of exactly what ran
            assert record["rel_error_algorithm"] < 1e-3, case


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(garbage=st.lists(st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b), max_size=4))
def test_garbage_between_records_never_hides_a_record(tmp_path_factory, garbage):
    path = tmp_path_factory.mktemp("store") / "s.jsonl"
    record = {"schema_version": metabench.results.SCHEMA_VERSION, "status": "ok"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # each garbage line is reported (tests/test_store.py checks how)
        store = ResultsStore(path)
        for i in range(3):
            assert store.append({**record, "case_id": f"c{i}"})
            with open(path, "ab") as fh:  # another program's bytes, one line each
                for junk in garbage:
                    fh.write(junk + b"\n")
        ids = [r["case_id"] for r in read_records(path)]
        again = ResultsStore(path)
    assert sorted(set(ids)) == ["c0", "c1", "c2"] and len(ids) == len(set(ids))
    assert all(f"c{i}" in again for i in range(3))


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_do_not_change_what_is_computed(threads, linear_problem, linear_theta):
    """The same hypergradient with 1 or 2 intra-op threads, to round-off (BLAS reductions may reorder)."""
    before = torch.get_num_threads()
    algorithm = metabench.get_algorithm("imaml", inner_steps=20, inner_lr=0.1, cg_iters=5)
    reference = algorithm.hypergradient(linear_problem, linear_theta).grad
    try:
        torch.set_num_threads(threads)
        grad = algorithm.hypergradient(linear_problem, linear_theta).grad
    finally:
        torch.set_num_threads(before)
    assert float((grad - reference).norm() / reference.norm()) < 1e-12
