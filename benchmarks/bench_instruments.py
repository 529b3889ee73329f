"""What the instruments cost: instrumented / bare time of one hypergradient (a ratio, so machine noise cancels)."""

from metabench.measure import instrument_overhead

from .common import TINY, prepared


class InstrumentOverhead:
    params = (["maml", "imaml"],)
    param_names = ["algorithm"]
    timeout = 120

    def setup_cache(self):
        return {
            name: instrument_overhead(
                prepared(algorithm=name, inner_steps=2 if TINY else 50, kappa=10.0),
                "cpu",
                min_run_time=0.01 if TINY else 0.2,
            )
            for name in self.params[0]
        }

    def track_live_tracker_ratio(self, overhead, algorithm):
        return overhead[algorithm]["live_tracker_ratio"]

    track_live_tracker_ratio.unit = "instrumented / bare time"

    def track_flop_counter_ratio(self, overhead, algorithm):
        return overhead[algorithm]["flop_counter_ratio"]

    track_flop_counter_ratio.unit = "instrumented / bare time"
