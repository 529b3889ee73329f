"""One hypergradient on linear meta-regression: time, memory, error, oracle counts and FLOPs.

Parameterised over algorithm x inner_steps x cg_iters x kappa. cg_iters applies to imaml only,
so the other algorithms run at the first cg_iters value and are n/a (skipped) for the rest.
``LinearHypergradient`` times the call and asv's own process peak; ``LinearHypergradientQuality``
tracks what asv cannot see, from metabench records computed once in ``setup_cache``.
"""

import itertools

from .common import grid, prepared, record

ALGORITHMS = ["maml", "maml_nesterov", "truncated", "fomaml", "imaml"]
PARAMS = grid(full=(ALGORITHMS, [10, 100], [2, 10], [10.0, 1000.0]), tiny=(ALGORITHMS, [2], [1, 2], [10.0]))
PARAM_NAMES = ["algorithm", "inner_steps", "cg_iters", "kappa"]


def _case(algorithm, inner_steps, cg_iters, kappa) -> dict:
    """The metabench case parameters of one benchmark point; NotImplementedError where it does not apply."""
    if algorithm != "imaml" and cg_iters != PARAMS[2][0]:
        raise NotImplementedError("cg_iters applies to imaml only")
    options = {"algorithm": algorithm, "inner_steps": inner_steps, "kappa": kappa}
    if algorithm == "maml_nesterov":
        options.update(algorithm="maml", inner_solver="nesterov", momentum="auto")
    if algorithm == "truncated":
        options["truncate"] = max(1, inner_steps // 4)
    if algorithm == "imaml":
        options["cg_iters"] = cg_iters
    return options


class LinearHypergradient:
    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 120

    def setup(self, *params):
        self.call = prepared(**_case(*params))
        self.call()  # warm-up

    def time_hypergradient(self, *params):
        self.call()

    def peakmem_hypergradient(self, *params):
        self.call()


class LinearHypergradientQuality:
    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 300

    def setup_cache(self):
        records = {}
        for point in itertools.product(*PARAMS):
            try:
                records[point] = record(**_case(*point))
            except NotImplementedError:
                continue
        return records

    def setup(self, records, *params):
        if params not in records:
            raise NotImplementedError("cg_iters applies to imaml only")

    def track_live_peak_bytes(self, records, *params):
        return records[params]["live_peak_bytes"]

    track_live_peak_bytes.unit = "bytes"

    def track_saved_bytes(self, records, *params):
        return records[params]["saved_bytes"]

    track_saved_bytes.unit = "bytes"

    def track_rel_error_exact(self, records, *params):
        return records[params]["rel_error_exact"]

    track_rel_error_exact.unit = "relative l2 error"

    def track_gradient_evaluations(self, records, *params):
        r = records[params]
        return r["inner_grads"] + r["outer_grads"] + r["hvps"] + r["jvps"]

    track_gradient_evaluations.unit = "oracle calls"

    def track_hvps(self, records, *params):
        return records[params]["hvps"]

    track_hvps.unit = "Hessian-vector products"

    def track_matmul_flops(self, records, *params):
        return records[params]["matmul_flops"]

    track_matmul_flops.unit = "FLOPs"
