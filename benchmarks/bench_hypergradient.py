"""One hypergradient on linear meta-regression: time, memory, error, oracle counts and FLOPs.

Parameterised over algorithm x inner_steps x cg_iters x kappa; cg_iters applies to imaml only,
so the other algorithms run at the first cg_iters value and report n/a for the rest.
"""

from .common import prepared, record

ALGORITHMS = ["maml", "maml_nesterov", "truncated", "fomaml", "imaml"]


def _options(algorithm: str, inner_steps: int, cg_iters: int) -> dict:
    options = {"algorithm": algorithm, "inner_steps": inner_steps}
    if algorithm == "maml_nesterov":
        options.update(algorithm="maml", inner_solver="nesterov", momentum="auto")
    if algorithm == "truncated":
        options["truncate"] = max(1, inner_steps // 4)
    if algorithm == "imaml":
        options["cg_iters"] = cg_iters
    return options


class LinearHypergradient:
    params = (ALGORITHMS, [10, 100], [2, 10], [10.0, 1000.0])
    param_names = ["algorithm", "inner_steps", "cg_iters", "kappa"]
    timeout = 120

    def setup(self, algorithm, inner_steps, cg_iters, kappa):
        if algorithm != "imaml" and cg_iters != self.params[2][0]:
            raise NotImplementedError("cg_iters applies to imaml only")
        self.options = dict(_options(algorithm, inner_steps, cg_iters), kappa=kappa)
        self.call = prepared(**self.options)
        self.call()  # warm-up

    def time_hypergradient(self, *params):
        self.call()

    def peakmem_hypergradient(self, *params):
        self.call()

    def track_live_peak_bytes(self, *params):
        return record(**self.options)["live_peak_bytes"]

    track_live_peak_bytes.unit = "bytes"

    def track_saved_bytes(self, *params):
        return record(**self.options)["saved_bytes"]

    track_saved_bytes.unit = "bytes"

    def track_rel_error_exact(self, *params):
        return record(**self.options)["rel_error_exact"]

    track_rel_error_exact.unit = "relative l2 error"

    def track_gradient_evaluations(self, *params):
        r = record(**self.options)
        return r["inner_grads"] + r["outer_grads"] + r["hvps"] + r["jvps"]

    track_gradient_evaluations.unit = "oracle calls"

    def track_hvps(self, *params):
        return record(**self.options)["hvps"]

    track_hvps.unit = "Hessian-vector products"

    def track_matmul_flops(self, *params):
        return record(**self.options)["matmul_flops"]

    track_matmul_flops.unit = "FLOPs"
