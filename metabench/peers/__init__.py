"""Peer libraries computing the same meta-gradients as metabench's ``maml``, ``fomaml`` and ``imaml``, for comparison.

Each peer module exposes ``available() -> (bool, reason)`` and one function per algorithm it implements:

- ``maml_meta_gradient(problem, theta, tasks, inner_steps, inner_lr)``: on a ``FewShotClassification``
  in the "maml" formulation with lam = 0, the mean over tasks of d/dtheta CE(query; phi_K), phi_K = K SGD
  steps (lr ``inner_lr``) on CE(support) from theta: what ``get_algorithm("maml", inner_steps=K,
  inner_lr=lr)`` computes;
- ``fomaml_meta_gradient(...)`` (same arguments): the query gradient at phi_K (first-order MAML);
- ``imaml_meta_gradient(problem, theta, tasks, inner_steps, inner_lr, cg_iters, damping)``: on the
  problem with lam > 0, ``cg_iters`` CG iterations from 0 on (H + (lam + damping) I) v = grad L(phi_K),
  grad = mean lam v, phi_K = K SGD steps on support loss + lam/2 ||phi - theta||^2: what
  ``get_algorithm("imaml", ..., damping=damping)`` computes.

Peers: ``plain`` (hand-written torch.autograd: all three), ``higher`` (maml), ``torchopt`` (maml with
MetaSGD, imaml with its implicit differentiation) and ``learn2learn`` (maml); a peer that cannot be
imported is skipped with its reason, never a crash. Install the libraries with the ``peers`` extra.

:func:`compare` checks every available peer against metabench's result for the same algorithm
(relative l2 difference), then times (median, ``metabench.measure.time_call``) and measures the peak
live-tensor bytes (``metabench.measure.LiveTensorTracker``) of one meta-gradient per implementation,
in one process, and returns rows with metabench / best-peer ratios per algorithm.

**imaml** needs lam > 0 (a strongly convex inner problem), so it runs on ``problem.with_lam(IMAML_LAM)``:
the same network, weights and tasks. On the BatchNorm conv4 workload the inner Hessian is indefinite at
the initial weights (lambda_min(H + I) measured -44 at K = 1 and -21 at K = 5 for one task), so CG meets
negative curvature unless damped: the command uses ``damping = IMAML_DAMPING``.
"""

from __future__ import annotations

import importlib
import math
import time

import torch

__all__ = ["IMAML_DAMPING", "IMAML_LAM", "METABENCH", "PEERS", "ROW_KEYS", "compare", "load_peers", "peer"]

#: Peer name -> module (under ``metabench.peers``).
PEERS = {
    "plain": "metabench.peers.plain",
    "higher": "metabench.peers.higher_peer",
    "torchopt": "metabench.peers.torchopt_peer",
    "learn2learn": "metabench.peers.learn2learn_peer",
}
#: metabench's algorithms in the comparison (each compared with the peers that implement it).
METABENCH = ("maml", "fomaml", "imaml")
#: The proximal weight of the problem imaml runs on (lam = 0 has no strongly convex inner problem).
IMAML_LAM = 1.0
#: The CG damping ``python -m metabench.peers`` gives imaml on the BatchNorm workload (see the module docstring).
IMAML_DAMPING = 50.0
#: Keys of every row :func:`compare` returns.
ROW_KEYS = (
    "algorithm",
    "implementation",
    "source",
    "status",
    "reason",
    "n_tasks",
    "inner_steps",
    "inner_lr",
    "lam",
    "cg_iters",
    "damping",
    "dtype",
    "time_s",
    "time_iqr_s",
    "time_runs",
    "peak_live_bytes",
    "rel_diff",
    "rel_diff_float64",
    "time_ratio_to_best_peer",
    "time_ratio_iqr",
    "memory_ratio_to_best_peer",
    "compile",
    "compile_s",
)
#: metabench's algorithms that also run with ``compile="on"`` (their untracked inner gradients under
#: torch.compile; maml's differentiated steps stay eager, so it has no such row)
COMPILED = ("fomaml", "imaml")


def peer(name: str):
    """The peer module ``name`` (a key of :data:`PEERS`)."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; choose from {list(PEERS)}")
    return importlib.import_module(PEERS[name])


def load_peers(names=None) -> dict[str, tuple[object | None, str]]:
    """``{name: (module or None, reason)}`` for the peers in ``names`` (all by default); None where unavailable."""
    out = {}
    for name in names or PEERS:
        module = peer(name)
        try:
            ok, reason = module.available()
        except Exception as error:  # noqa: BLE001 - a peer's check must never crash the comparison
            ok, reason = False, f"available() raised {type(error).__name__}: {error}"
        out[name] = (module if ok else None, reason)
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    scale = float(b.norm())
    diff = float((a - b).norm())
    return diff / scale if scale > 0 else diff


def _peak_bytes(fn) -> int:
    from metabench.measure import LiveTensorTracker

    with LiveTensorTracker() as tracker:
        fn()
    return int(tracker.peak_bytes)


def compare(
    problem,
    tasks,
    inner_steps: int,
    inner_lr: float,
    implementations=None,
    *,
    algorithms=METABENCH,
    theta: torch.Tensor | None = None,
    cg_iters: int = 5,
    damping: float = 0.0,
    rounds: int = 5,
    check_float64: bool = False,
    compiled: bool = False,
    verbose: bool = True,
) -> list[dict]:
    """Agreement, time and peak live-tensor bytes of one meta-gradient per algorithm and implementation.

    ``problem``: a ``FewShotClassification`` ("maml" formulation, lam = 0); imaml runs on
    ``problem.with_lam(IMAML_LAM)`` with ``cg_iters`` and ``damping``. ``algorithms``: a subset of
    :data:`METABENCH`; ``implementations``: names from :data:`PEERS` (default all). For each algorithm,
    metabench's row comes first, then one row per requested peer that implements it (an unavailable
    peer gives a ``status="skipped"`` row with the reason). ``rel_diff`` is each peer's relative l2
    difference to metabench's result in theta's dtype (``rel_diff_float64`` with ``check_float64``).
    ``theta`` defaults to ``problem.initial_theta()``. ``compiled``: also a row "metabench+compile" for the
    algorithms of :data:`COMPILED` (option ``compile="on"``; its ``compile`` says what ran and ``compile_s`` the
    first call's compile time, which the warm-up call absorbs and the timing leaves out).

    Timing is interleaved: after each implementation's check (which warms it up) and its memory pass,
    ``rounds`` rounds each time one call of every implementation of the algorithm in turn, and
    ``time_s`` is the median over rounds. A slow drift of a shared machine then moves every
    implementation alike instead of favouring whichever ran in a quiet moment. The time ratio is paired:
    ``time_ratio_to_best_peer`` is the median over rounds of (this row's time in the round) / (the fastest
    peer's time in the same round), and ``time_ratio_iqr`` its interquartile range (the noise of the ratio).
    The memory ratio is the row's peak over the smallest peer's peak. Ratios are None where no peer ran.
    """
    from metabench._checks import check_int

    rounds = check_int("rounds", rounds, low=1)
    from metabench.peers._common import check_problem

    check_problem(problem)
    bad = [a for a in algorithms if a not in METABENCH]
    if bad:
        raise ValueError(f"unknown algorithms {bad}; choose from {list(METABENCH)}")
    names = list(PEERS if implementations is None else implementations)
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise ValueError(f"unknown implementations {unknown}; choose from {list(PEERS)}")
    theta = (problem.initial_theta() if theta is None else theta).detach()
    index = problem.task_index(tasks)
    peers = load_peers(names)
    say = print if verbose else (lambda *a, **k: None)
    rows = []
    for algorithm in algorithms:
        rows += _compare_one(
            algorithm, problem, theta, index, inner_steps, inner_lr, peers, cg_iters, damping, rounds,
            check_float64, say, compiled and algorithm in COMPILED,
        )  # fmt: skip
    return rows


def _compare_one(
    algorithm, problem, theta, index, K, lr, peers, cg_iters, damping, rounds, check64, say, compiled=False
):
    """The rows of one algorithm: metabench's (and metabench+compile's), then each peer implementing it, with
    ratios to the best peer."""
    import metabench as mb

    target = problem.with_lam(IMAML_LAM) if algorithm == "imaml" else problem
    options = {"inner_steps": K, "inner_lr": lr}
    extra = {"cg_iters": cg_iters, "damping": damping} if algorithm == "imaml" else {}
    adapter = mb.get_algorithm(algorithm, **options, **extra)
    calls = {"metabench": lambda t: adapter.hypergradient(target, t, tasks=index).grad}
    compile_info = {}
    if compiled:
        on = mb.get_algorithm(algorithm, **options, **extra, compile="on")

        def call_compiled(t):
            result = on.hypergradient(target, t, tasks=index)
            compile_info.setdefault(t.dtype, result.info)  # the first call's: what ran and its compile time
            compile_info["last"] = result.info  # the latest call's (a timed one, once timing ran)
            return result.grad

        calls["metabench+compile"] = call_compiled
    skipped = {}
    for name, (module, reason) in peers.items():
        if not hasattr(peer(name), f"{algorithm}_meta_gradient"):
            continue  # the library has no such algorithm (or metabench's adapter to it does not)
        if module is None:
            skipped[name] = reason
        else:
            fn = getattr(module, f"{algorithm}_meta_gradient")
            calls[name] = lambda t, fn=fn: fn(target, t, index, K, lr, *extra.values())
    base = dict.fromkeys(ROW_KEYS) | {
        "algorithm": algorithm, "n_tasks": len(index), "inner_steps": K, "inner_lr": lr, "lam": target.lam,
        "dtype": str(theta.dtype).replace("torch.", ""), **extra,
    }  # fmt: skip
    reference = reference64 = None
    rows = []
    for name, fn in calls.items():
        ours = name.startswith("metabench")
        row = base | {"implementation": name, "source": "metabench" if ours else "peer"}
        row.update(status="ok", reason=peers[name][1] if name in peers else f"metabench {algorithm}")
        try:
            grad = fn(theta)
            if name == "metabench+compile":
                info = compile_info[theta.dtype]
                row.update(compile=info.get("compile"), compile_s=info.get("compile_s"))
                row["reason"] = f"compile='on': {info.get('compile')}" + (
                    f" (first call {info['compile_s']:.1f} s, not timed)" if info.get("compile_s") else ""
                )
                if info.get("compile") == "compiled":
                    row["reason"] += "; memory: its eager steps (the tracker runs compiled code eager)"
            if name == "metabench":
                reference = grad
                reference64 = calls[name](theta.double()) if check64 else None
            elif reference is not None:
                row["rel_diff"] = _rel(grad, reference)
                if check64:
                    row["rel_diff_float64"] = _rel(fn(theta.double()), reference64)
                say(f"[peers] {algorithm} / {name}: relative l2 difference to metabench {row['rel_diff']:.2e}")
            del grad
            row["peak_live_bytes"] = _peak_bytes(lambda fn=fn: fn(theta))
            say(f"[peers] {algorithm} / {name}: peak live {row['peak_live_bytes'] / 2**20:.1f} MB")
        except Exception as error:  # noqa: BLE001 - one failing implementation is reported, never a crash
            row.update(status="error", reason=f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
            say(f"[peers] {algorithm} / {name}: failed ({row['reason']})")
            if name == "metabench":
                reference = None
        rows.append(row)
    _time_interleaved([r for r in rows if r["status"] == "ok"], calls, theta, rounds, say)
    for row in rows:  # the timed calls of metabench+compile ran what the last one says (a fallback is said)
        last = compile_info.get("last", {}).get("compile")
        if row["implementation"] == "metabench+compile" and row["status"] == "ok" and last != row["compile"]:
            row["reason"] += f"; the timed calls ran {last!r}"
            row["compile"] = last
    for name, reason in skipped.items():
        rows.append(base | {"implementation": name, "source": "peer", "status": "skipped", "reason": reason})
        say(f"[peers] {algorithm} / {name}: skipped ({reason})")
    ran = [r for r in rows if r["source"] == "peer" and r["status"] == "ok"]
    if ran:
        best_mem = min(r["peak_live_bytes"] for r in ran)
        best_per_round = [min(r["round_times"][i] for r in ran) for i in range(rounds)]
        for r in rows:
            if r["status"] == "ok":
                ratios = [mine / best for mine, best in zip(r["round_times"], best_per_round)]
                q1, median, q3 = _quartiles(ratios)
                r["time_ratio_to_best_peer"], r["time_ratio_iqr"] = median, q3 - q1
                r["memory_ratio_to_best_peer"] = r["peak_live_bytes"] / best_mem if best_mem else math.nan
    for r in rows:
        r.pop("round_times", None)
    return rows


def _quartiles(values) -> tuple[float, float, float]:
    spent = torch.tensor(values, dtype=torch.float64)
    return tuple(float(x) for x in torch.quantile(spent, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)))


def _time_interleaved(rows, calls, theta, rounds, say) -> None:
    """Fill time_s (median), time_iqr_s and time_runs of ``rows`` from ``rounds`` interleaved rounds."""
    from metabench.measure.timing import synchronize

    times = {row["implementation"]: [] for row in rows}
    for _ in range(rounds):
        for name, spent in times.items():
            synchronize(theta.device)
            start = time.perf_counter()
            calls[name](theta)
            synchronize(theta.device)
            spent.append(time.perf_counter() - start)
    for row in rows:
        q1, median, q3 = _quartiles(times[row["implementation"]])
        row.update(time_s=median, time_iqr_s=q3 - q1, time_runs=rounds, round_times=times[row["implementation"]])
        say(f"[peers] {row['algorithm']} / {row['implementation']}: {median:.3f} s (median of {rounds})")
