"""A fault for sweep workers, imported into them by the executor tests (``imports=("tests.worker_faults",)``).

Every case whose ``inner_steps`` equals ``$METABENCH_FAULT_INNER_STEPS`` kills its worker process the way a
segmentation fault does (``os._exit(139)``: no exception, no cleanup). Never imported by the test process itself.
"""

import os

import metabench.sweep.case as case_module

_real_run_case = case_module.run_case


def _run_case(case, *args, **kwargs):
    victim = os.environ.get("METABENCH_FAULT_INNER_STEPS")
    if victim is not None and (case.get("options") or {}).get("inner_steps") == int(victim):
        os._exit(139)
    return _real_run_case(case, *args, **kwargs)


case_module.run_case = _run_case
