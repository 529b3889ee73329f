"""torch.compile on the inner step: does it run, is it right, is it faster? (A trial, not a benchmark suite.)

One inner step of the few-shot conv4-64 workload (5-way 5-shot, BatchNorm, float32, one task, 1 thread) is the
single-task support loss and its gradient with respect to all weights. Compared, eager vs ``torch.compile``:

- first order (the inner gradient without a graph: fomaml, and the implicit methods' inner loop);
- second order (``create_graph=True`` and a backward through the gradient: MAML's step), where double backward
  under compile has been silently wrong in some torch versions, so the check is the point.

Each is checked against eager (relative difference of the gradient, and of the Hessian-vector product for the
second-order one) and timed (median of interleaved rounds, after compilation). Run:
``python benchmarks/compile_trial.py > reports/structure/compile.md``.
"""

import statistics
import sys
import time

import torch
import torch._functorch.config as functorch_config

from metabench.problems import FewShotClassification
from metabench.problems.few_shot import network

torch.set_num_threads(1)


def main() -> int:
    problem = FewShotClassification.generate(n_tasks=1, formulation="maml", lam=0.0)
    theta = problem.initial_theta()
    data = problem.batch_data(theta, problem.task_index())
    X, y = data["X_support"][0], data["y_support"][0]
    spec = problem._phi_spec
    model = problem.model
    u = torch.randn_like(theta)

    def loss(w):
        return network.data_loss(network.forward(model, network.views(w, spec), X), y, "cross_entropy")

    def first_order(f):
        w = theta.detach().requires_grad_(True)
        return torch.autograd.grad(f(w), w)[0]

    def second_order(f):
        w = theta.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(f(w), w, create_graph=True)
        (hv,) = torch.autograd.grad(g, w, u)
        return torch.cat([g.detach(), hv])

    lines = ["# torch.compile on the inner step (trial)", "", __doc__.split("\n\n")[1], ""]
    lines += [
        f"torch {torch.__version__}, 1 thread.",
        "",
        "| step | compile | rel. diff. to eager | eager ms | compiled ms | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    compiled = torch.compile(loss)

    def second_order_no_donation(f):
        with functorch_config.patch(donated_buffer=False):
            return second_order(f)

    no_donation = torch.compile(loss)  # a fresh compilation, under the patched config
    for name, step, f_c in (
        ("first order (gradient)", first_order, compiled),
        ("second order (gradient + HVP through it)", second_order, compiled),
        ("second order, torch._functorch.config.donated_buffer=False", second_order_no_donation, no_donation),
    ):
        eager_value = step(loss)
        start = time.perf_counter()
        try:
            value = step(f_c)
        except Exception as error:  # noqa: BLE001 - the finding is whether it runs
            lines.append(
                f"| {name} | raised: {type(error).__name__}: {str(error).splitlines()[0][:160]} | - | - | - | - |"
            )
            continue
        compile_s = time.perf_counter() - start
        diff = float((value - eager_value).norm() / eager_value.norm())
        times = {"eager": [], "compiled": []}
        for _ in range(7):
            for key, f in (("eager", loss), ("compiled", f_c)):
                t = time.perf_counter()
                step(f)
                times[key].append(time.perf_counter() - t)
        e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
        lines.append(
            f"| {name} | ran (first call {compile_s:.0f} s) | {diff:.1e} | {1e3 * e:.1f} | {1e3 * c:.1f} "
            f"| {e / c:.2f}x |"
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
