"""One hypergradient on the quadratic bilevel problem (ITD-BiO / RM-MetaL setting)."""

import itertools

from .common import grid, prepared, record

PARAMS = grid(
    full=(["itd_bio", "imaml", "rm_metal", "neumann"], [10, 100], [100.0]),
    tiny=(["itd_bio", "imaml", "rm_metal", "neumann"], [2], [10.0]),
)
PARAM_NAMES = ["algorithm", "inner_steps", "kappa"]


def _case(algorithm, inner_steps, kappa) -> dict:
    return {
        "problem": "quadratic_bilevel",
        "algorithm": algorithm,
        "inner_steps": inner_steps,
        "kappa": kappa,
        "cg_iters": 10,
        "neumann_iters": 50,
    }


class BilevelHypergradient:
    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 120

    def setup(self, *params):
        self.call = prepared(**_case(*params))
        self.call()

    def time_hypergradient(self, *params):
        self.call()


class BilevelHypergradientQuality:
    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 300

    def setup_cache(self):
        return {point: record(**_case(*point)) for point in itertools.product(*PARAMS)}

    def track_live_peak_bytes(self, records, *params):
        return records[params]["live_peak_bytes"]

    track_live_peak_bytes.unit = "bytes"

    def track_rel_error_exact(self, records, *params):
        return records[params]["rel_error_exact"]

    track_rel_error_exact.unit = "relative l2 error"
