"""Micro-benchmarks (pytest-benchmark): metabench's maml beside the plain torch.autograd peer.

One second-order MAML meta-gradient (4 tasks, 5 inner steps at lr 0.1) on a small conv workload
(5-way 1-shot, 5 query, conv4 with 16 filters on 14x14 images, float32); both start from the same
weights and compute the same meta-gradient (checked in tests/test_peers.py). Compare the two in the
"peers-maml" group of ``nox -s pytest_benchmark``.
"""

import pytest
import torch

import metabench as mb
from metabench.peers import peer
from metabench.problems import FewShotClassification

torch.set_num_threads(1)

STEPS, LR, TASKS = 5, 0.1, [0, 1, 2, 3]


@pytest.fixture(scope="module")
def conv():
    return FewShotClassification.omniglot_like(ways=5, shots=1, query=5, n_tasks=4, filters=16, image_size=14)


@pytest.mark.parametrize("implementation", ["metabench_maml", "plain"])
def test_maml_meta_gradient(benchmark, conv, implementation):
    theta = conv.initial_theta()
    if implementation == "plain":
        module = peer("plain")

        def run():
            return module.maml_meta_gradient(conv, theta, TASKS, STEPS, LR)

    else:
        algorithm = mb.get_algorithm("maml", inner_steps=STEPS, inner_lr=LR)

        def run():
            return algorithm.hypergradient(conv, theta, tasks=TASKS).grad

    benchmark.group = "peers-maml"
    benchmark(run)
