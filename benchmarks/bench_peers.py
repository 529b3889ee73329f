"""One meta-gradient on the few-shot conv workload: metabench's adapters beside the peer libraries.

Parameterised over algorithm (maml, fomaml, imaml) x implementation ("metabench" or a peer of
``metabench.peers``) x task batch x inner steps. The workload is the standard one (5-way 5-shot, 15
query, conv4 with 64 filters, BatchNorm, float32), or a tiny net under METABENCH_ASV_TINY=1. A peer that
is not installed, or has no such algorithm, is n/a (NotImplementedError in setup, with the reason).
imaml runs on lam = IMAML_LAM with damping IMAML_DAMPING (see ``metabench.peers``: the BatchNorm net's
inner Hessian is indefinite at its initial weights). For the agreement check and the ratios in one run,
use ``python -m metabench.peers``.
"""

import torch

import metabench as mb
from metabench.measure import LiveTensorTracker
from metabench.peers import IMAML_DAMPING, IMAML_LAM, METABENCH, PEERS, peer
from metabench.problems import FewShotClassification

from .common import TINY, grid

IMPLEMENTATIONS = ["metabench", *PEERS]
PARAMS = grid(full=(list(METABENCH), IMPLEMENTATIONS, [4], [1, 5]), tiny=(list(METABENCH), IMPLEMENTATIONS, [2], [1]))
PARAM_NAMES = ["algorithm", "implementation", "tasks", "inner_steps"]
INNER_LR, CG_ITERS = 0.1, 5
_PROBLEMS = {}


def _problem(lam: float = 0.0) -> FewShotClassification:
    if lam not in _PROBLEMS:
        if 0.0 not in _PROBLEMS:
            size = {"ways": 2, "shots": 1, "query": 2, "filters": 4, "image_size": 8, "norm": "none"} if TINY else {}
            _PROBLEMS[0.0] = FewShotClassification.omniglot_like(n_tasks=max(PARAMS[2]), **size)
        _PROBLEMS[lam] = _PROBLEMS[0.0].with_lam(lam)
    return _PROBLEMS[lam]


def _call(algorithm, implementation, tasks, inner_steps):
    """The zero-argument meta-gradient call; NotImplementedError (n/a) for a peer that cannot run it."""
    index = list(range(tasks))
    problem = _problem(IMAML_LAM if algorithm == "imaml" else 0.0)
    theta = problem.initial_theta()
    extra = {"cg_iters": CG_ITERS, "damping": IMAML_DAMPING} if algorithm == "imaml" else {}
    if implementation == "metabench":
        adapter = mb.get_algorithm(algorithm, inner_steps=inner_steps, inner_lr=INNER_LR, **extra)
        return lambda: adapter.hypergradient(problem, theta, tasks=index).grad
    module = peer(implementation)
    fn = getattr(module, f"{algorithm}_meta_gradient", None)
    if fn is None:
        raise NotImplementedError(f"{implementation} has no {algorithm}")
    ok, reason = module.available()
    if not ok:
        raise NotImplementedError(reason)
    return lambda: fn(problem, theta, index, inner_steps, INNER_LR, *extra.values())


class PeerMetaGradient:
    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 300

    def setup(self, *params):
        torch.set_num_threads(1)
        self.call = _call(*params)
        self.call()  # warm-up

    def time_meta_gradient(self, *params):
        self.call()

    def track_live_peak_bytes(self, *params):
        with LiveTensorTracker() as tracker:
            self.call()
        return tracker.peak_bytes

    track_live_peak_bytes.unit = "bytes"
