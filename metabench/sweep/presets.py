"""Named sweeps: ``smoke`` (seconds), ``table1`` (iMAML's Table 1, from a least-compute plan), ``fig2a`` and
``fig2b`` (iMAML's Figure 2), ``bilevel`` (ITD-BiO / RM-MetaL setting), ``training`` (meta-training trajectories of
every algorithm family), ``few_shot_truth``, ``conv_memory`` and ``conv_checkpointed`` (networks), ``train_rm_metal``
and ``train_imaml`` (the papers' comparisons meta-trained to accuracy on few-shot tasks)."""

from __future__ import annotations

from metabench.sweep import table1
from metabench.sweep.sizes import problem_case
from metabench.sweep.spec import Sweep

__all__ = ["PRESETS", "get_preset"]

# The closed-form problems are small dense matrices: intra-op threads only add contention, and one
# thread keeps timings comparable across machines.
_LINEAR = problem_case("linear_meta_regression", threads=1)
_BILEVEL = problem_case("quadratic_bilevel", threads=1)

#: inner steps of iMAML Figure 2a (dense enough on log axes to show where each curve flattens)
_FIG2_STEPS = [1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 300, 500, 1000]

PRESETS: dict[str, dict] = {
    "smoke": {
        "name": "smoke",
        "description": "a handful of cases on tiny problems, every algorithm once: seconds",
        "defaults": {"inner_lr": "auto", "min_run_time": 0.01, "n_tasks": 2, "kappa": 10.0, "threads": 1},
        "grid": [
            {
                "algorithm": ["maml", "truncated", "fomaml", "imaml", "neumann"],
                "problem": ["linear_meta_regression"],
                "dim": [8],
                "n_train": [16],
                "n_val": [8],
                "lam": [1.0],
                "inner_steps": [5, 20],
                "truncate": [2],
                "cg_iters": [5],
            },
            {
                "algorithm": ["itd_bio", "rm_metal", "imaml"],
                "problem": ["quadratic_bilevel"],
                "p": [4],
                "q": [8],
                "rho": [0.1],
                "inner_steps": [5, 20],
                "cg_iters": [5],
            },
        ],
    },
    # built from the committed least-compute plan (metabench/sweep/table1.py), not a fixed grid
    "table1": {"name": "table1", "description": table1.DESCRIPTION, "build": table1.table1_spec},
    "bilevel": {
        "name": "bilevel",
        "description": "itd_bio, rm_metal, imaml and neumann on the quadratic bilevel problem",
        "defaults": {**_BILEVEL, "inner_lr": "auto", "min_run_time": 0.05},
        "grid": [
            {"algorithm": ["itd_bio", "maml"], "inner_steps": [1, 10, 100, 1000], "kappa": [1.0, 10.0, 100.0, 1000.0]},
            {
                "algorithm": ["imaml", "rm_metal"],
                "inner_steps": [1, 10, 100, 1000],
                "cg_iters": [1, 5, 20],
                "kappa": [1.0, 10.0, 100.0, 1000.0],
            },
            {
                "algorithm": ["neumann"],
                "inner_steps": [1, 10, 100, 1000],
                "neumann_iters": [10, 100, 1000],
                "kappa": [1.0, 10.0, 100.0, 1000.0],
            },
        ],
    },
    "training": {
        "name": "training",
        "description": (
            "meta-training (mode train, 100 SGD outer steps at outer_lr = 1/L_F) from the same theta: "
            "itd_bio, imaml, rm_metal (cg_iters 5) and neumann (neumann_iters 20) on the quadratic bilevel "
            "problem, maml, fomaml, imaml and rm_metal (cg_iters 5) on linear meta-regression, inner steps 5 and "
            "20, kappa 100; records F(theta_t) - F*, exact gradient norm, time and oracle calls per outer step"
        ),
        "defaults": {"mode": "train", "outer_steps": 100, "outer_lr": "auto", "inner_lr": "auto", "kappa": 100.0},
        "grid": [
            {
                **{k: [v] for k, v in _BILEVEL.items()},
                "algorithm": ["itd_bio", "imaml", "rm_metal", "neumann"],
                "inner_steps": [5, 20],
                "cg_iters": [5],
                "neumann_iters": [20],
            },
            {
                **{k: [v] for k, v in _LINEAR.items()},
                "algorithm": ["maml", "fomaml", "imaml", "rm_metal"],
                "inner_steps": [5, 20],
                "cg_iters": [5],
            },
        ],
    },
    "fig2a": {
        "name": "fig2a",
        "description": (
            "iMAML Figure 2a: relative error to the exact hypergradient vs inner GD steps, maml and imaml with 1, 2 "
            "and 5 CG iterations, on linear meta-regression (4 tasks, dim 20, n_train 40, kappa 100, lam 1) with a "
            "clustered spectrum (5 distinct eigenvalues: CG is exact in 5 iterations) and the geometric one (20 "
            "distinct) for contrast"
        ),
        "defaults": {
            **problem_case("linear_meta_regression", dim=20, n_train=40, n_val=40),
            "kappa": 100.0,
            "threads": 1,
            "inner_lr": "auto",
            "instruments": [],
        },
        "grid": [
            {"spectrum": ["clustered"], "distinct": [5], "algorithm": ["maml"], "inner_steps": _FIG2_STEPS},
            {
                "spectrum": ["clustered"],
                "distinct": [5],
                "algorithm": ["imaml"],
                "cg_iters": [1, 2, 5],
                "inner_steps": _FIG2_STEPS,
            },
            {"spectrum": ["geometric"], "algorithm": ["maml"], "inner_steps": _FIG2_STEPS},
            {"spectrum": ["geometric"], "algorithm": ["imaml"], "cg_iters": [1, 2, 5], "inner_steps": _FIG2_STEPS},
        ],
    },
    "fig2b": {
        "name": "fig2b",
        "description": (
            "iMAML Figure 2b: peak memory vs inner steps (1..25) of maml, fomaml and imaml (5 CG iterations, "
            "damping 50: the BatchNorm nets' inner Hessian is indefinite) on ONE 20-way 5-shot Omniglot-shaped "
            "task, lam 2, float32, with both conv4-64 nets (max-pool; stride-2 as iMAML's code); memory only, no "
            "reference errors"
        ),
        "defaults": {
            **problem_case("few_shot_classification", n_tasks=1),
            "ways": 20,
            "shots": 5,
            "query": 5,
            "formulation": "maml",
            "lam": 2.0,
            "dtype": "float32",
            "inner_lr": 0.1,
            "cg_iters": 5,
            "damping": 50.0,
            "instruments": ["memory"],
            "truth": "skip",
            "threads": 1,
        },
        "grid": [
            {
                "algorithm": ["maml", "fomaml", "imaml"],
                "downsample": ["maxpool", "stride"],
                "inner_steps": [1, 5, 10, 15, 20, 25],
            }
        ],
    },
    "conv_memory": {
        "name": "conv_memory",
        "description": (
            "peak memory vs inner steps on the 5-way 5-shot/15-query conv4-64 workload, 4 tasks, float32 "
            "(RM-MetaL Figure 2: maml, itd_bio, imaml, rm_metal on the backbone + linear-head formulation, features "
            "recomputed in every loss as RM-MetaL's code does; "
            "maml, maml_checkpointed and imaml (CG damping 50: the BatchNorm net's inner Hessian is indefinite) on the "
            "all-weights formulation, lam = 1); memory instruments only"
        ),
        "defaults": {
            **problem_case("few_shot_classification"),
            "dtype": "float32",
            "inner_lr": 0.1,
            "cg_iters": 5,
            "instruments": ["memory"],
        },
        "grid": [
            {  # RM-MetaL's comparison re-runs the backbone in every loss (features recomputed), as its code does;
                # features="once" (the default elsewhere) is flat in K for all four: reports/structure
                "algorithm": ["maml", "itd_bio", "imaml", "rm_metal"],
                "formulation": ["bilevel"],
                "features": ["recompute"],
                "inner_steps": [1, 5, 10, 20],
            },
            {
                "algorithm": ["maml", "maml_checkpointed"],
                "formulation": ["maml"],
                "lam": [1.0],
                "inner_steps": [1, 5, 10, 20, 50],
            },
            {
                "algorithm": ["imaml"],
                "formulation": ["maml"],
                "lam": [1.0],
                "damping": [50.0],
                "inner_steps": [1, 5, 10, 20],
            },
        ],
    },
    "few_shot_truth": {
        "name": "few_shot_truth",
        "description": (
            "every algorithm judged against the float64 references on a network where they exist: 5-way 5-shot "
            "scikit-learn digits, conv4 with 16 filters, SiLU, average pooling, no normalisation (a smooth loss), "
            "4 tasks, float32; bilevel (head) formulation, and the all-weights formulation with lam = 1 (implicit "
            "reference) and lam = 0 (the K-step objective is the reference); time and memory"
        ),
        "defaults": {
            **problem_case("few_shot_classification"),
            "dataset": "digits",
            "filters": 16,
            "activation": "silu",
            "pool": "avg",
            "norm": "none",
            "shots": 5,
            "query": 10,
            "dtype": "float32",
            "inner_lr": 0.1,
            "cg_iters": 10,
            "truncate": 2,
            "neumann_iters": 20,
            "instruments": ["time", "memory"],
            "min_run_time": 0.05,
            "threads": 1,
        },
        "grid": [
            {
                "algorithm": ["maml", "itd_bio", "imaml", "rm_metal", "neumann"],
                "formulation": ["bilevel"],
                "inner_steps": [5, 20],
            },
            {
                "algorithm": ["maml", "maml_checkpointed", "truncated", "fomaml", "imaml", "neumann"],
                "formulation": ["maml"],
                "lam": [1.0],
                "inner_steps": [5, 20],
            },
            {"algorithm": ["imaml"], "formulation": ["maml"], "lam": [1.0], "damping": [1.0], "inner_steps": [20]},
            {"algorithm": ["maml", "fomaml"], "formulation": ["maml"], "lam": [0.0], "inner_steps": [5, 20]},
        ],
    },
    "conv_checkpointed": {
        "name": "conv_checkpointed",
        "description": (
            "maml vs maml_checkpointed (the same meta-gradient, inner loop recomputed from sqrt(K) checkpoints) on "
            "the 5-way 5-shot/15-query conv4-64 workload, one task, float32: time and peak memory at K = 20 and 50"
        ),
        "defaults": {
            "problem": "few_shot_classification",
            "dataset": "omniglot_like",
            "n_tasks": 1,
            "dtype": "float32",
            "inner_lr": 0.1,
            "instruments": ["time", "memory"],
        },
        "grid": [{"algorithm": ["maml", "maml_checkpointed"], "inner_steps": [20, 50]}],
    },
}


# Meta-training to accuracy (metabench.meta_train): fresh episodes each outer step, Adam, validation every 25
# steps, test accuracy after 20 fine-tuning steps. Sized for a CPU: minutes, not the papers' GPU-days.
_TRAINING = {
    "problem": "few_shot_classification",
    "mode": "train",
    "dtype": "float32",
    "threads": 1,
    "ways": 5,
    "query": 5,
    "n_tasks": 1,
    "filters": 32,
    "optimizer": "adam",
    "outer_lr": 1e-3,
    "outer_steps": 200,
    "task_batch": 4,
    "eval_every": 25,
    "eval_tasks": 20,
    "test_tasks": 50,
    "fine_tune_steps": 20,
    "inner_lr": 0.1,
}
_TRAINING_DATA = {"dataset": ["omniglot_like", "digits"]}

PRESETS["train_rm_metal"] = {
    "name": "train_rm_metal",
    "description": (
        "RM-MetaL's comparison, meta-trained to accuracy: rm_metal and itd_bio on the bilevel formulation "
        "(backbone + head, K = N = 20), maml (K = 5) and anil (head only, K = 5), 5-way 5-shot, conv4-32 with "
        "BatchNorm, on the Omniglot-shaped generator and scikit-learn's digits: minutes on a CPU"
    ),
    "defaults": {**_TRAINING, "shots": 5, "norm": "batch"},
    "grid": [
        {"algorithm": ["rm_metal", "itd_bio"], "formulation": ["bilevel"], "inner_steps": [20], "cg_iters": [20]},
        {"algorithm": ["maml"], "formulation": ["maml"], "inner_steps": [5]},
        {"algorithm": ["anil"], "formulation": ["anil"], "inner_steps": [5]},
    ],
}
PRESETS["train_imaml"] = {
    "name": "train_imaml",
    "description": (
        "iMAML's Omniglot comparison, meta-trained to accuracy: imaml with GD (16 steps) and Hessian-free "
        "(newton_cg, 2 Newton steps of 5 CG iterations) inner solvers at lam = 2 with 5 CG steps for the "
        "meta-gradient, run as iMAML's released code runs CG (cg_breakdown = 'continue': it goes on through "
        "non-positive curvature, which this net meets below -lam), maml (K = 5), fomaml (K = 5) and reptile "
        "(K = 5), 5-way 1-shot, conv4-32 with BatchNorm, on the Omniglot-shaped generator and scikit-learn's "
        "digits; tested after each method's own inner loop, as iMAML evaluates: minutes on a CPU"
    ),
    "defaults": {**_TRAINING, "shots": 1, "norm": "batch", "formulation": "maml"},
    "grid": [
        {
            "algorithm": ["imaml"],
            "lam": [2.0],
            "inner_solver": ["gd"],
            "inner_steps": [16],
            "cg_iters": [5],
            "cg_breakdown": ["continue"],
            "fine_tune_steps": [16],
        },
        {
            "algorithm": ["imaml"],
            "lam": [2.0],
            "inner_solver": ["newton_cg"],
            "inner_steps": [2],
            "newton_cg_iters": [5],
            "cg_iters": [5],
            "cg_breakdown": ["continue"],
            "fine_tune_steps": [2],
        },
        {"algorithm": ["maml", "fomaml", "reptile"], "lam": [0.0], "inner_steps": [5], "fine_tune_steps": [5]},
    ],
}
for _preset in ("train_rm_metal", "train_imaml"):
    PRESETS[_preset]["grid"] = [{**block, **_TRAINING_DATA} for block in PRESETS[_preset]["grid"]]


def get_preset(name: str) -> Sweep:
    """The named preset sweep (a preset with ``build`` is made by calling it: ``table1`` reads its plan)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    spec = PRESETS[name]
    return Sweep.from_dict(spec["build"]() if "build" in spec else spec)
