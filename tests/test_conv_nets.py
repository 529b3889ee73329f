"""Both 4-block conv nets of models.conv4 (max-pool and stride-2 blocks, iMAML Figure 2b) and their workloads."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import metabench as mb
from metabench.measure import LiveTensorTracker
from metabench.problems.few_shot import FewShotClassification
from metabench.problems.models import conv4, conv4_feature_size

F64 = torch.float64


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------- shapes and structure
@pytest.mark.parametrize(
    "downsample, image_size, side",
    [("maxpool", 28, 1), ("stride", 28, 2), ("maxpool", 8, 1), ("stride", 8, 1), ("stride", 12, 1), ("maxpool", 12, 1)],
)
def test_output_shapes(downsample, image_size, side):
    assert conv4_feature_size(image_size, downsample) == side
    model = conv4(1, ways=7, filters=6, image_size=image_size, downsample=downsample, seed=1)
    assert model.head.in_features == 6 * side * side
    x = torch.randn(4, 1, image_size, image_size)
    assert model(x).shape == (4, 7)
    features = model[:-2](x)  # the blocks
    assert features.shape == (4, 6, side, side)


def test_feature_map_sizes_block_by_block():
    for downsample, sizes in (("maxpool", [14, 7, 3, 1]), ("stride", [14, 7, 4, 2])):
        model = conv4(filters=4, downsample=downsample)
        x, got = torch.randn(2, 1, 28, 28), []
        for b in range(1, 5):
            x = getattr(model, f"block{b}")(x)
            got.append(x.shape[-1])
        assert got == sizes, downsample


#: recorded from conv4(seed=3) (and conv4(seed=3, image_size=8, filters=32)) before ``downsample`` existed
DEFAULT_NET = {
    "params": 112261,
    "first_weights": [-0.33049100637435913, -0.2629537582397461, -0.14277169108390808, -0.31536346673965454],
    "conv1_sum": -7.309763425611891,
    "all_sum": 237.5167567559275,
    "all_squares": 346.01051555412363,
    "digits_params": 28485,
    "digits_all_sum": 126.61813121606986,
}


def test_default_net_unchanged():
    for model in (conv4(seed=3), conv4(seed=3, downsample="maxpool")):
        assert n_params(model) == DEFAULT_NET["params"]
        w = model.block1[0].weight.detach()
        assert w.flatten()[:4].tolist() == DEFAULT_NET["first_weights"]
        assert float(w.double().sum()) == pytest.approx(DEFAULT_NET["conv1_sum"], rel=1e-12)
        with torch.no_grad():
            assert float(sum(p.double().sum() for p in model.parameters())) == pytest.approx(DEFAULT_NET["all_sum"])
            squares = float(sum((p.double() ** 2).sum() for p in model.parameters()))
            assert squares == pytest.approx(DEFAULT_NET["all_squares"], rel=1e-10)
        assert [type(m).__name__ for m in model.block1] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
        assert model.head.in_features == 64
    digits = conv4(seed=3, image_size=8, filters=32)
    assert n_params(digits) == DEFAULT_NET["digits_params"]
    with torch.no_grad():
        assert float(sum(p.double().sum() for p in digits.parameters())) == pytest.approx(DEFAULT_NET["digits_all_sum"])


def test_stride_net_structure():
    model = conv4(ways=20, seed=3, downsample="stride")
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(
        c.stride == (2, 2) and c.padding == (1, 1) and c.kernel_size == (3, 3) for c in convs
    )
    assert model.head.in_features == 64 * 2 * 2 and n_params(model) == 117076  # maxpool, 20-way: 113236
    assert n_params(conv4(ways=20, seed=3)) == 113236
    # the conv weights are drawn in the same order as the max-pool net's: only the head differs
    maxpool = conv4(ways=20, seed=3)
    assert torch.equal(model.block4[0].weight, maxpool.block4[0].weight)


def test_stride_net_is_imaml_code_net():
    """iMAML's make_conv_network (Omniglot) pads (0, 1, 0, 1) before its third conv: the output is the same."""
    model = conv4(ways=5, filters=8, seed=0, downsample="stride").double()
    layers = []
    for b in range(1, 5):
        if b == 3:
            layers.append(nn.ZeroPad2d((0, 1, 0, 1)))
        layers += list(getattr(model, f"block{b}"))
    imaml = nn.Sequential(*layers, nn.Flatten(), model.head)
    x = torch.randn(6, 1, 28, 28, dtype=F64)
    assert torch.equal(model(x), imaml(x))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"downsample": "pool"}, "downsample must be one of"),
        ({"downsample": None}, "downsample"),
        ({"downsample": "stride", "pool": "avg"}, "pool applies only to downsample='maxpool'"),
    ],
)
def test_bad_downsample(kwargs, match):
    with pytest.raises(ValueError, match=match):
        conv4(**kwargs)


# ---------------------------------------------------------------------------- workloads record downsample
def test_workloads_record_downsample():
    small = {"ways": 3, "shots": 1, "query": 1, "n_tasks": 2, "filters": 4, "dtype": F64}
    for downsample, pool in (("maxpool", "max"), ("stride", None)):
        p = FewShotClassification.omniglot_like(**small, downsample=downsample)
        info = p.describe()
        assert info["downsample"] == downsample and info["pool"] == pool and json.loads(json.dumps(info)) == info
        assert p.theta_shape == p.initial_theta().shape
        assert p.initial_theta().numel() == n_params(conv4(1, 3, filters=4, downsample=downsample))
        imaml = FewShotClassification.imaml_omniglot(**small, downsample=downsample)
        assert imaml.describe()["downsample"] == downsample and imaml.describe()["lam"] == 2.0
        gen = FewShotClassification.generate("omniglot_like", **small, downsample=downsample)
        assert gen.describe()["downsample"] == downsample
        assert torch.equal(gen.initial_theta(), p.initial_theta())
        digits = FewShotClassification.generate("digits", **small, downsample=downsample)
        assert digits.describe()["downsample"] == downsample and digits.describe()["image_size"] == 8
    default = FewShotClassification.omniglot_like(**small).describe()
    assert default["downsample"] == "maxpool" and default["pool"] == "max" and default["activation"] == "relu"
    with pytest.raises(ValueError, match="downsample"):
        FewShotClassification.omniglot_like(**small, downsample="strided")
    with pytest.raises(ValueError, match="downsample"):
        FewShotClassification.digits(**small, downsample="max")


def test_maml_runs_on_the_stride_net():
    p = FewShotClassification.digits(ways=3, shots=1, query=1, n_tasks=2, filters=4, dtype=F64, downsample="stride")
    hg = mb.get_algorithm("maml", inner_steps=2, inner_lr=0.1).hypergradient(p, p.initial_theta())
    assert torch.isfinite(hg.grad).all() and hg.grad.shape == p.initial_theta().shape


# ---------------------------------------------------------------------------- memory per inner step
def _peak(problem, K):
    algorithm = mb.get_algorithm("maml", inner_steps=K, inner_lr=0.1)
    theta = problem.initial_theta()
    algorithm.hypergradient(problem, theta)  # warm-up
    with LiveTensorTracker() as tracker:
        algorithm.hypergradient(problem, theta)
    return tracker.peak_bytes


def test_stride_net_needs_less_memory_per_inner_step():
    """MAML's live bytes per inner step ((peak at K = 3 - peak at K = 1) / 2): the stride net keeps no
    full-resolution (28x28) conv outputs. Measured (float32, filters 8, 5-way 1-shot, 1 query, one task):
    795040 B/step max-pool, 178400 B/step stride, ratio 0.224 (the full imaml_omniglot task: 120.5 and 26.4
    MiB/step, ratio 0.219)."""
    per_step = {}
    for downsample in ("maxpool", "stride"):
        p = FewShotClassification.omniglot_like(ways=5, shots=1, query=1, n_tasks=1, filters=8, downsample=downsample)
        per_step[downsample] = (_peak(p, 3) - _peak(p, 1)) / 2
    assert per_step["maxpool"] > 0 and per_step["stride"] > 0
    assert per_step["stride"] / per_step["maxpool"] < 0.4, per_step  # measured 0.224
