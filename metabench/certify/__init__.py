"""Certify an outside meta-gradient implementation against the closed forms: which meta-gradient it computes.

    import metabench
    verdict = metabench.certify(meta_grad, claim="maml")  # metabench certify FILE.py:meta_grad --claim maml
    print(verdict.sentence)  # "claims maml; computes fomaml on every case (8 of 8): ..."

The function is written in one of two shapes (:mod:`metabench.certify.shapes`): functional
``meta_grad(theta, inner_loss, outer_loss, phi0, inner_steps, inner_lr, **hyper)`` for one task, or module-based
``meta_grad(model, loss_fn, support, query, inner_steps, inner_lr, **hyper)`` as higher / TorchOpt loops are.
metabench runs it on linear-meta-regression tasks it chooses (:mod:`~metabench.certify.cases`: seeds, shapes,
kappa, K, step sizes, float64 and float32), compares each answer with every closed-form candidate
(:mod:`~metabench.certify.candidates`: maml, truncated with each T, fomaml, implicit, zero), and says which one
it computes on every case (:mod:`~metabench.certify.classify`, :mod:`~metabench.certify.verdict`), with the
cost profile in K (:mod:`~metabench.certify.profile`). For use in tests see :func:`metabench.testing.assert_computes`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from metabench.certify.candidates import FAMILIES
from metabench.certify.cases import PLAIN_CASES, PROXIMAL_CASES, Case
from metabench.certify.classify import judge_case
from metabench.certify.profile import GROWTHS, profile
from metabench.certify.shapes import SHAPES, inspect_target
from metabench.certify.verdict import Verdict, overall

__all__ = ["CLAIMS", "SHAPES", "Case", "Verdict", "certify", "load_function"]

#: What ``claim`` accepts: the candidate families but "zero", which nothing claims.
CLAIMS = tuple(f for f in FAMILIES if f != "zero")


def certify(
    fn,
    claim: str | None = None,
    *,
    shape: str | None = None,
    hyper: dict | None = None,
    iteration_param: str | None = None,
    cases=None,
    memory: str | None = None,
    measure_profile: bool = True,
) -> Verdict:
    """Run ``fn`` on closed-form problems and say which meta-gradient it computes.

    ``claim``: what it should compute (one of :data:`CLAIMS`; None: only report). ``shape``: "functional" or
    "module" (None: told from the first parameter's name). ``hyper``: fixed values for extra keyword
    parameters. ``iteration_param``: the name of its iteration count, if not one of the usual names (swept to
    see an implicit method converge). ``cases``: :class:`Case` objects to run on instead of the defaults
    (``PROXIMAL_CASES``, or ``PLAIN_CASES`` with lam = 0 for a module-shaped function without a proximal
    weight). ``memory``: a claimed memory growth in K ("flat", "sqrt", "linear"), checked by the profile.
    ``measure_profile``: measure peak memory and time against K (a few seconds; off skips it).
    """
    if claim is not None and claim not in CLAIMS:
        raise ValueError(f"claim must be one of {list(CLAIMS)} (or None), got {claim!r}")
    if memory is not None and memory not in GROWTHS:
        raise ValueError(f"memory must be one of {list(GROWTHS)} (or None), got {memory!r}")
    if memory is not None and not measure_profile:
        raise ValueError("memory is checked by the cost profile: measure_profile must be True")
    target = inspect_target(fn, shape=shape, hyper=hyper, iteration_param=iteration_param)
    if cases is None:
        cases = PROXIMAL_CASES if target.proximal else PLAIN_CASES
    cases = list(cases)
    if not cases or not all(isinstance(c, Case) for c in cases):
        raise ValueError("cases must be a non-empty sequence of metabench.certify.Case")
    if not target.proximal and any(c.lam > 0 for c in cases):
        raise ValueError(
            f"{target.name} is module-shaped without a proximal weight parameter ({', '.join(('lam', 'lamb'))}, ...), "
            "so it runs plain MAML (lam = 0): every case needs lam = 0"
        )
    results = [judge_case(target, i, case) for i, case in enumerate(cases)]
    cost = profile(target) if measure_profile else None
    return overall(target, claim, results, memory_claim=memory, profile=cost)


def load_function(spec: str):
    """The function named by ``"MODULE:FUNCTION"``: MODULE a path to a ``.py`` file (imported with its folder
    on ``sys.path``, as running it would) or an importable dotted name. Raises ValueError naming what is missing."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected MODULE:FUNCTION (e.g. examples/certify/maml.py:meta_grad), got {spec!r}")
    path = Path(module_name)
    if module_name.endswith(".py") or path.exists():
        if not path.is_file():
            raise ValueError(f"no such file: {module_name}")
        folder = str(path.resolve().parent)
        name = f"_metabench_certify_{path.stem}_{abs(hash(str(path.resolve())))}"
        loader = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader)
        sys.path.insert(0, folder)
        try:
            loader.loader.exec_module(module)
        except ImportError as error:
            raise ValueError(f"cannot import {module_name}: {error} (is the package it needs installed?)") from None
        except Exception as error:  # noqa: BLE001 - the user's file may raise anything at import
            raise ValueError(f"importing {module_name} raised {type(error).__name__}: {error}") from None
        finally:
            if sys.path and sys.path[0] == folder:
                sys.path.pop(0)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ValueError(f"cannot import {module_name!r}: {error}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        names = sorted(n for n in vars(module) if callable(vars(module)[n]) and not n.startswith("_"))
        raise ValueError(f"{module_name} has no function {attr!r}; it has {names}")
    return fn
