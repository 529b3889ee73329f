"""Helpers for other projects' test suites: check what a meta-gradient implementation computes.

    from metabench.testing import assert_computes

    def test_my_maml_is_maml():
        assert_computes(my_package.meta_grad, "maml")

See :func:`metabench.certify` for the shapes the function may have and what the verdict holds.
"""

from __future__ import annotations

__all__ = ["assert_computes"]


def assert_computes(fn, claim: str, **options):
    """Certify ``fn`` (``metabench.certify(fn, claim, **options)``; the cost profile is off unless ``memory`` is
    given) and raise AssertionError with the verdict's sentence and its case table unless the claim holds.
    Returns the :class:`~metabench.certify.Verdict`."""
    from metabench.certify import certify

    options.setdefault("measure_profile", options.get("memory") is not None)
    verdict = certify(fn, claim, **options)
    if not verdict.passed:
        raise AssertionError(f"{verdict.sentence}\n\n{verdict.to_markdown()}")
    return verdict
