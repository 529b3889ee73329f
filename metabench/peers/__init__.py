"""Peer libraries computing the same second-order MAML meta-gradient as metabench's ``maml``, for comparison.

Each peer module exposes ``available() -> (bool, reason)`` and
``maml_meta_gradient(problem, theta, tasks, inner_steps, inner_lr) -> Tensor``: on a ``FewShotClassification``
in the "maml" formulation with lam = 0, the mean over tasks of d/dtheta CE(query; phi_K), phi_K = K SGD
steps (lr ``inner_lr``) on CE(support) from theta, exactly what ``get_algorithm("maml", inner_steps=K,
inner_lr=lr)`` computes. Peers: ``plain`` (torch.autograd with create_graph=True), ``higher``, ``torchopt``
and ``learn2learn``; a peer that cannot be imported is skipped with its reason, never a crash. Install the
libraries with the ``peers`` extra (see pyproject.toml).

:func:`compare` checks every available peer against metabench's maml (relative l2 difference), then times
(median, ``metabench.measure.time_call``) and measures the peak live-tensor bytes
(``metabench.measure.LiveTensorTracker``) of one meta-gradient for metabench's maml, fomaml and imaml and
for each peer, in one process, and returns rows with metabench / best-peer ratios.

**imaml** needs lam > 0 (its inner problem must be strongly convex), so it runs on a second problem with
the same network, weights and tasks but lam = 1.0 (``IMAML_LAM``), with ``cg_iters`` CG iterations: it
computes a different meta-gradient (no agreement check), and its time and memory are set beside the MAML
peers' as what a user pays for a meta-gradient on this workload. fomaml's difference to maml is printed
for information only (a first-order approximation, not expected to agree).
"""

from __future__ import annotations

import importlib
import math

import torch

__all__ = ["IMAML_LAM", "METABENCH", "PEERS", "ROW_KEYS", "compare", "load_peers", "peer", "with_lam"]

#: Peer name -> module (under ``metabench.peers``).
PEERS = {
    "plain": "metabench.peers.plain",
    "higher": "metabench.peers.higher_peer",
    "torchopt": "metabench.peers.torchopt_peer",
    "learn2learn": "metabench.peers.learn2learn_peer",
}
#: metabench's own algorithms in the comparison.
METABENCH = ("maml", "fomaml", "imaml")
#: The proximal weight of the problem imaml runs on (lam = 0 has no strongly convex inner problem).
IMAML_LAM = 1.0
#: Keys of every row :func:`compare` returns.
ROW_KEYS = (
    "implementation",
    "source",
    "status",
    "reason",
    "n_tasks",
    "inner_steps",
    "inner_lr",
    "lam",
    "dtype",
    "time_s",
    "time_iqr_s",
    "time_runs",
    "peak_live_bytes",
    "rel_diff_to_maml",
    "time_ratio_to_best_peer",
    "memory_ratio_to_best_peer",
)


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


def with_lam(problem, lam: float):
    """The same network, weights, tasks and path as ``problem`` (a FewShotClassification), with proximal weight lam."""
    from metabench.problems import FewShotClassification

    return FewShotClassification(
        problem._model, **problem._data, formulation="maml", lam=lam, loss=problem.loss, path=problem.path,
        meta=problem._meta,
    )  # fmt: skip


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
    theta: torch.Tensor | None = None,
    cg_iters: int = 5,
    min_run_time: float = 0.5,
    check_float64: bool = False,
    verbose: bool = True,
) -> list[dict]:
    """Agreement, time and peak live-tensor bytes of one meta-gradient per implementation, in one run.

    ``implementations``: names from :data:`METABENCH` and :data:`PEERS` (default: all). ``problem``: a
    ``FewShotClassification`` ("maml" formulation, lam = 0); imaml runs on :func:`with_lam` (lam =
    :data:`IMAML_LAM`). ``theta`` defaults to ``problem.initial_theta()``. Each MAML peer's relative l2
    difference to metabench's maml is printed (``verbose``) and stored in ``rel_diff_to_maml`` (in theta's
    dtype; with ``check_float64`` also ``rel_diff_to_maml_float64``, in float64). Rows of unavailable peers
    have ``status="skipped"`` and the reason. Ratios are each row's time (memory) over the best available
    peer's; None when no peer ran.
    """
    import metabench as mb
    from metabench.peers._common import check_problem

    check_problem(problem)
    names = list(implementations or (*METABENCH, *PEERS))
    unknown = [n for n in names if n not in METABENCH and n not in PEERS]
    if unknown:
        raise ValueError(f"unknown implementations {unknown}; choose from {[*METABENCH, *PEERS]}")
    theta = (problem.initial_theta() if theta is None else theta).detach()
    index = problem.task_index(tasks)
    peers = load_peers([n for n in names if n in PEERS])
    say = print if verbose else (lambda *a, **k: None)

    calls, lams = {}, {}
    for name in names:
        if name in METABENCH:
            lam = IMAML_LAM if name == "imaml" else 0.0
            target = with_lam(problem, lam) if lam else problem
            options = {"inner_steps": inner_steps, "inner_lr": inner_lr}
            if name == "imaml":
                options["cg_iters"] = cg_iters
            algorithm = mb.get_algorithm(name, **options)
            calls[name] = lambda a=algorithm, p=target, t=theta: a.hypergradient(p, t, tasks=index).grad
            lams[name] = lam
        elif peers[name][0] is not None:
            module = peers[name][0]
            calls[name] = lambda m=module, t=theta: m.maml_meta_gradient(problem, t, index, inner_steps, inner_lr)
            lams[name] = 0.0

    reference = mb.get_algorithm("maml", inner_steps=inner_steps, inner_lr=inner_lr)
    maml_grad = reference.hypergradient(problem, theta, tasks=index).grad
    maml_grad64 = None
    if check_float64:
        maml_grad64 = reference.hypergradient(problem, theta.double(), tasks=index).grad

    rows = []
    for name in names:
        row = dict.fromkeys(ROW_KEYS)
        row.update(
            implementation=name,
            source="metabench" if name in METABENCH else "peer",
            n_tasks=len(index),
            inner_steps=inner_steps,
            inner_lr=inner_lr,
            dtype=str(theta.dtype).replace("torch.", ""),
        )
        if name not in calls:
            row.update(status="skipped", reason=peers[name][1])
            say(f"[peers] {name}: skipped ({peers[name][1]})")
            rows.append(row)
            continue
        fn = calls[name]
        row.update(status="ok", lam=lams[name], reason=peers[name][1] if name in peers else "")
        try:
            _measure(row, name, fn, problem, theta, index, peers, maml_grad, maml_grad64, cg_iters, min_run_time, say)
        except Exception as error:  # noqa: BLE001 - one failing implementation is reported, never a crash
            row.update(status="error", reason=f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
            for key in ("time_s", "time_iqr_s", "time_runs", "peak_live_bytes"):
                row[key] = None
            say(f"[peers] {name}: failed ({row['reason']})")
        rows.append(row)

    ran = [r for r in rows if r["source"] == "peer" and r["status"] == "ok"]
    if ran:
        best_time = min(r["time_s"] for r in ran)
        best_mem = min(r["peak_live_bytes"] for r in ran)
        for r in rows:
            if r["status"] == "ok":
                r["time_ratio_to_best_peer"] = r["time_s"] / best_time
                r["memory_ratio_to_best_peer"] = r["peak_live_bytes"] / best_mem if best_mem else math.nan
    return rows


def _measure(row, name, fn, problem, theta, index, peers, maml_grad, maml_grad64, cg_iters, min_run_time, say):
    """Fill ``row`` with the agreement, time and peak live bytes of ``fn`` (one implementation)."""
    import metabench as mb
    from metabench.measure import time_call

    inner_steps, inner_lr = row["inner_steps"], row["inner_lr"]
    if name == "imaml":
        row["reason"] = f"lam = {IMAML_LAM}, cg_iters = {cg_iters}: a different objective, no agreement check"
    else:
        row["rel_diff_to_maml"] = _rel(fn(), maml_grad)
        if maml_grad64 is not None:
            module = peers[name][0] if name in peers else None
            if module is not None:
                g64 = module.maml_meta_gradient(problem, theta.double(), index, inner_steps, inner_lr)
            else:
                opts = {"inner_steps": inner_steps, "inner_lr": inner_lr}
                g64 = mb.get_algorithm(name, **opts).hypergradient(problem, theta.double(), tasks=index).grad
            row["rel_diff_to_maml_float64"] = _rel(g64, maml_grad64)
        note = " (first order: not expected to agree)" if name == "fomaml" else ""
        extra = f", float64 {row['rel_diff_to_maml_float64']:.2e}" if "rel_diff_to_maml_float64" in row else ""
        say(f"[peers] {name}: relative l2 difference to metabench maml {row['rel_diff_to_maml']:.2e}{extra}{note}")
    timing = time_call(fn, theta.device, min_run_time=min_run_time)
    row.update(time_s=timing["time_median_s"], time_iqr_s=timing["time_iqr_s"], time_runs=timing["time_runs"])
    row["peak_live_bytes"] = _peak_bytes(fn)
    say(f"[peers] {name}: {row['time_s']:.3f} s, peak live {row['peak_live_bytes'] / 2**20:.1f} MB")
