"""One hypergradient on the quadratic bilevel problem (ITD-BiO / RM-MetaL setting)."""

from .common import prepared, record


class BilevelHypergradient:
    params = (["itd_bio", "imaml", "rm_metal", "neumann"], [10, 100], [100.0])
    param_names = ["algorithm", "inner_steps", "kappa"]
    timeout = 120

    def setup(self, algorithm, inner_steps, kappa):
        self.options = {
            "problem": "quadratic_bilevel",
            "algorithm": algorithm,
            "inner_steps": inner_steps,
            "kappa": kappa,
            "cg_iters": 10,
            "neumann_iters": 50,
        }
        self.call = prepared(**self.options)
        self.call()

    def time_hypergradient(self, *params):
        self.call()

    def track_live_peak_bytes(self, *params):
        return record(**self.options)["live_peak_bytes"]

    track_live_peak_bytes.unit = "bytes"

    def track_rel_error_exact(self, *params):
        return record(**self.options)["rel_error_exact"]

    track_rel_error_exact.unit = "relative l2 error"
