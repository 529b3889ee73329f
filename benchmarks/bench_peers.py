"""One MAML meta-gradient on the few-shot conv workload: metabench's adapters beside the peer libraries.

Parameterised over implementation (metabench's maml, fomaml, imaml; the peers of ``metabench.peers``)
x task batch x inner steps. The workload is the standard one (5-way 5-shot, 15 query, conv4 with 64
filters, float32), or a tiny net under METABENCH_ASV_TINY=1. A peer that is not installed is n/a
(NotImplementedError in setup, with the reason); imaml runs with lam = 1.0 (see ``metabench.peers``);
where its CG meets negative curvature (SolverBreakdown: measured here on the BatchNorm conv net in
float32 at lam = 1 to 100) it is n/a with that reason, and ``python -m metabench.peers`` reports it.
For the agreement check and the ratios in one run, use ``python -m metabench.peers``.
"""

import torch

import metabench as mb
from metabench.errors import SolverBreakdown
from metabench.measure import LiveTensorTracker
from metabench.peers import IMAML_LAM, METABENCH, PEERS, peer, with_lam
from metabench.problems import FewShotClassification

from .common import TINY, grid

IMPLEMENTATIONS = [*METABENCH, *PEERS]
PARAMS = grid(full=(IMPLEMENTATIONS, [4], [1, 5]), tiny=(IMPLEMENTATIONS, [2], [1]))
PARAM_NAMES = ["implementation", "tasks", "inner_steps"]
INNER_LR = 0.1
_PROBLEMS = {}


def _problem(lam: float = 0.0) -> FewShotClassification:
    if lam not in _PROBLEMS:
        if 0.0 not in _PROBLEMS:
            size = {"ways": 2, "shots": 1, "query": 2, "filters": 4, "image_size": 8, "norm": "none"} if TINY else {}
            _PROBLEMS[0.0] = FewShotClassification.omniglot_like(n_tasks=max(PARAMS[1]), **size)
        _PROBLEMS[lam] = with_lam(_PROBLEMS[0.0], lam)
    return _PROBLEMS[lam]


def _call(implementation, tasks, inner_steps):
    """The zero-argument meta-gradient call; NotImplementedError (n/a) for a peer that cannot be loaded."""
    index = list(range(tasks))
    if implementation in PEERS:
        module = peer(implementation)
        ok, reason = module.available()
        if not ok:
            raise NotImplementedError(reason)
        problem = _problem()
        theta = problem.initial_theta()
        return lambda: module.maml_meta_gradient(problem, theta, index, inner_steps, INNER_LR)
    options = {"inner_steps": inner_steps, "inner_lr": INNER_LR}
    problem = _problem(IMAML_LAM if implementation == "imaml" else 0.0)
    algorithm = mb.get_algorithm(implementation, **options)
    theta = problem.initial_theta()
    return lambda: algorithm.hypergradient(problem, theta, tasks=index).grad


class PeerMetaGradient:
    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 300

    def setup(self, *params):
        torch.set_num_threads(1)
        self.call = _call(*params)
        try:
            self.call()  # warm-up
        except SolverBreakdown as error:  # imaml's CG on the BatchNorm conv net (lam = 1): n/a, with the reason
            raise NotImplementedError(f"{params[0]}: {error}") from error

    def time_meta_gradient(self, *params):
        self.call()

    def track_live_peak_bytes(self, *params):
        with LiveTensorTracker() as tracker:
            self.call()
        return tracker.peak_bytes

    track_live_peak_bytes.unit = "bytes"
