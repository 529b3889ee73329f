"""Ratios that structure buys, measured in one run each so machine noise cancels (asv ``track_``):

- features once vs recompute on the bilevel formulation (itd_bio, imaml, rm_metal): time at K = 20 and peak
  live memory K = 50 over K = 1 (target: <= 0.3 and <= 1.1);
- exact MAML by binomial checkpointing (``maml_checkpointed`` with ``schedule="revolve"``) against plain maml at
  K = 10: peak live memory and time per inner step at K = REVOLVE_STEPS (targets: <= 1 and <= 2.5);
- one Hessian-vector product per mode as a multiple of one inner gradient (``metabench.hvp_check``);
- ``compile="on"`` against eager at K = 20 (fomaml on the MAML formulation, imaml on the bilevel one with the
  features recomputed), after the compiling call, and whether the compiled steps passed their check (1) or ran
  eager (0).

The workload is the standard conv4-64 5-way 5-shot/15-query task, float32, one task; a tiny net under
METABENCH_ASV_TINY=1.
"""

import statistics
import time

import metabench as mb
from metabench.measure import LiveTensorTracker
from metabench.oracle import HVP_MODES
from metabench.problems import FewShotClassification

from .common import TINY

SIZE = {"filters": 4, "image_size": 8, "ways": 2, "shots": 1, "query": 2} if TINY else {}
REVOLVE_STEPS = 4 if TINY else 200  # the committed table (reports/structure) has K = 1000
FEATURE_STEPS, FLAT_STEPS = (2, 3) if TINY else (20, 50)  # K of the time ratio, and of the memory ratio against K = 1
ROUNDS = 1 if TINY else 3


def _problem(formulation: str) -> FewShotClassification:
    extra = {"lam": 1.0} if formulation == "maml" else {}
    return FewShotClassification.generate(n_tasks=1, formulation=formulation, **SIZE, **extra)


def _run(problem, theta, name, **options):
    alg = mb.get_algorithm(name, inner_lr=0.1, **options)
    start = time.perf_counter()
    with LiveTensorTracker() as tracker:
        alg.hypergradient(problem, theta)
    return time.perf_counter() - start, tracker.peak_bytes


class FeaturesOnce:
    params = (["itd_bio", "imaml", "rm_metal"],)
    param_names = ["algorithm"]
    timeout = 600

    def setup_cache(self):
        problem = _problem("bilevel")
        theta = problem.initial_theta()
        out = {}
        for name in self.params[0]:
            times = {"once": [], "recompute": []}
            for _ in range(ROUNDS):  # interleaved
                for form in times:
                    times[form].append(_run(problem, theta, name, inner_steps=FEATURE_STEPS, features=form)[0])
            memory = [_run(problem, theta, name, inner_steps=K, features="once")[1] for K in (1, FLAT_STEPS)]
            out[name] = {
                "time": statistics.median(times["once"]) / statistics.median(times["recompute"]),
                "memory": memory[1] / memory[0],
            }
        return out

    def track_time_once_over_recompute_K20(self, ratios, algorithm):
        return ratios[algorithm]["time"]

    track_time_once_over_recompute_K20.unit = "once / recompute"

    def track_memory_K50_over_K1_once(self, ratios, algorithm):
        return ratios[algorithm]["memory"]

    track_memory_K50_over_K1_once.unit = "K=50 / K=1"


class RevolveCheckpointing:
    timeout = 1800

    def setup_cache(self):
        problem = _problem("maml")
        theta = problem.initial_theta()
        plain_t, plain_m = _run(problem, theta, "maml", inner_steps=2 if TINY else 10)
        rev_t, rev_m = _run(
            problem, theta, "maml_checkpointed", inner_steps=REVOLVE_STEPS, schedule="revolve", snapshots=10
        )
        plain_steps = 2 if TINY else 10
        return {"memory": rev_m / plain_m, "time_per_step": (rev_t / REVOLVE_STEPS) / (plain_t / plain_steps)}

    def track_memory_over_maml_K10(self, ratios):
        return ratios["memory"]

    track_memory_over_maml_K10.unit = "revolve peak / maml K=10 peak"

    def track_time_per_step_over_maml(self, ratios):
        return ratios["time_per_step"]

    track_time_per_step_over_maml.unit = "revolve / maml, per inner step"


class HVPModes:
    params = (list(HVP_MODES),)
    param_names = ["mode"]
    timeout = 600

    def setup_cache(self):
        from metabench.hvp_check import time_hvp_modes

        problem = _problem("maml")
        return time_hvp_modes(problem, problem.initial_theta(), rounds=ROUNDS)

    def track_time_over_gradient(self, timing, mode):
        return timing[mode]["time_ratio"]

    track_time_over_gradient.unit = "HVP / inner gradient"

    def track_memory_over_gradient(self, timing, mode):
        return timing[mode]["memory_ratio"]

    track_memory_over_gradient.unit = "HVP / inner gradient"


class CompiledSteps:
    params = (["fomaml", "imaml"],)
    param_names = ["algorithm"]
    timeout = 900

    def setup_cache(self):
        if TINY:  # the discover-and-run-once check: the suite's code, not inductor's C++ build (minutes, cold)
            from metabench.algorithms import compiled_step

            compiled_step.BACKEND = "aot_eager"
        out = {}
        for name, formulation, extra in (("fomaml", "maml", {}), ("imaml", "bilevel", {"features": "recompute"})):
            problem = _problem(formulation)
            theta = problem.initial_theta()
            options = {"inner_lr": 0.1, "inner_steps": FEATURE_STEPS, **extra}
            compiled = mb.get_algorithm(name, compile="on", **options)
            ran = compiled.hypergradient(problem, theta).info["compile"] == "compiled"  # compiles and checks
            eager = mb.get_algorithm(name, **options)
            times = {"on": [], "off": []}
            for _ in range(ROUNDS):  # interleaved
                for mode, alg in (("on", compiled), ("off", eager)):
                    start = time.perf_counter()
                    alg.hypergradient(problem, theta)
                    times[mode].append(time.perf_counter() - start)
            out[name] = {"time": statistics.median(times["on"]) / statistics.median(times["off"]), "ran": float(ran)}
        return out

    def track_time_compiled_over_eager_K20(self, ratios, algorithm):
        return ratios[algorithm]["time"]

    track_time_compiled_over_eager_K20.unit = "compiled / eager"

    def track_compiled_steps_passed_check(self, ratios, algorithm):
        return ratios[algorithm]["ran"]

    track_compiled_steps_passed_check.unit = "1 compiled, 0 eager"
