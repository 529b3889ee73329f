"""The verdict over all cases: which meta-gradient an implementation computes, whether that is what it claims,
in one sentence, and as JSON and Markdown.

It **computes** family F when F is matched on every case (:mod:`metabench.certify.classify`); of several, the
first of maml, truncated, fomaml, implicit, zero, where truncated needs at least one case with T < K (T >= K
is full back-prop) and a T common to all cases if there is one. A claim passes when it is what the function
computes; a function that raises or returns NaN on a case, or matches no candidate, is never certified.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from metabench.certify.candidates import FAMILIES

__all__ = ["DESCRIPTIONS", "Verdict", "overall"]

DESCRIPTIONS = {
    "maml": "back-prop through all K inner steps (the exact derivative of K-step MAML)",
    "truncated": "back-prop through the last T inner steps only (truncated back-prop)",
    "fomaml": "d phi_K / d theta taken as the identity (first-order MAML)",
    "implicit": "an implicit hypergradient: an approximate linear solve at phi_K (iMAML)",
    "zero": "a zero meta-gradient (theta never reaches the outer loss)",
    "none": "none of the candidates (maml, truncated, fomaml, implicit, zero)",
}


@dataclass
class Verdict:
    """What :func:`metabench.certify` found: ``computes`` (a family, "mixed" or "none"), ``passed`` (the claim
    holds; without a claim, the function computes some candidate), the ``sentence`` to print, every case's
    result, the common truncation T (if any), the memory claim and the cost profile."""

    target: str
    shape: str
    claim: str | None
    computes: str
    passed: bool
    sentence: str
    cases: list
    truncate: int | None = None
    memory_claim: str | None = None
    profile: dict | None = None
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "shape": self.shape,
            "claim": self.claim,
            "computes": self.computes,
            "passed": self.passed,
            "sentence": self.sentence,
            "truncate": self.truncate,
            "memory_claim": self.memory_claim,
            "notes": self.notes,
            "cases": [c.to_dict() for c in self.cases],
            "profile": self.profile,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        lines = [
            f"# Certification of `{self.target}`",
            "",
            f"**{'PASS' if self.passed else 'FAIL'}**: {self.sentence}",
            "",
        ]
        lines += [f"- {n}" for n in self.notes] + ([""] if self.notes else [])
        lines += [
            f"Shape: {self.shape}. Each case is one linear-meta-regression task with exact answers; errors are "
            "relative l2 distances of the function's meta-gradient to each closed-form candidate "
            "(`metabench.certify.candidates`), tol the round-off tolerance.",
            "",
            "| case | problem | tol | computes | error to maml | to fomaml | to nearest truncated | to implicit "
            "| to exact hypergradient | implicit sweep |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in self.cases:
            truncated = [e for label, e in c.errors.items() if label.startswith("truncated")]
            sweep = " ".join(f"{n}:{e:.1e}" for n, e in c.iterations) if c.iterations else "-"
            label = c.label if c.status == "ok" else f"{c.status}: {c.message}"
            if c.status == "ok" and not c.families and c.closest:
                label += f" (nearest {c.closest}" + (f", g = {c.scale:.4g} x it" if c.scale is not None else "") + ")"
            lines.append(
                f"| {c.index} | {c.case.describe()} | {c.tolerance:.1e} | {label} | {_e(c.error_to('maml'))} | "
                f"{_e(c.error_to('fomaml'))} | {_e(min(truncated) if truncated else None)} | "
                f"{_e(c.error_to('implicit'))} | {_e(c.exact_error)} | {sweep} |"
            )
        if self.profile:
            lines += ["", *profile_lines(self.profile)]
        return "\n".join(lines) + "\n"


def _e(value) -> str:
    return "-" if value is None else f"{value:.2e}"


def profile_lines(profile: dict) -> list[str]:
    if profile.get("status") != "ok":
        return [f"Cost profile: not measured ({profile.get('message')})."]
    growth, slope = profile["memory_growth"], profile["memory_slope"]
    per = {"linear": " bytes per inner step", "sqrt": " bytes per sqrt(step)"}.get(growth, "")
    head = (
        f"Cost profile ({profile['case']['dim']} parameters, float64, {profile['threads']} threads): peak live-tensor "
    )
    head += f"memory grows **{growth}** in K" + (f" ({slope:.0f}{per})" if slope is not None else "")
    if "inner_loss_calls_per_step" in profile:
        head += f"; {profile['inner_loss_calls_per_step']:.2f} inner_loss evaluations per inner step"
    rows = [
        "| K | peak live memory (bytes) | median time (ms) |"
        + (" inner_loss calls |" if "inner_loss_calls" in profile else "")
    ]
    rows.append("|---|---|---|" + ("---|" if "inner_loss_calls" in profile else ""))
    for i, K in enumerate(profile["inner_steps"]):
        row = f"| {K} | {profile['live_peak_bytes'][i]} | {1e3 * profile['time_median_s'][i]:.3f} |"
        if "inner_loss_calls" in profile:
            row += f" {profile['inner_loss_calls'][i]} |"
        rows.append(row)
    return [head + ".", "", *rows]


def _common_truncation(cases) -> int | None:
    """The smallest T that every case agrees with (a case that matched maml agrees with every T >= its K)."""

    def agrees(case, t: int) -> bool:
        return t in case.truncate or ("maml" in case.families and t >= case.case.inner_steps)

    options = {t for c in cases for t in c.truncate} | {c.case.inner_steps for c in cases if "maml" in c.families}
    return next((t for t in sorted(options) if all(agrees(c, t) for c in cases)), None)


def overall(target, claim: str | None, cases, memory_claim: str | None = None, profile: dict | None = None) -> Verdict:
    """Combine the case results into a :class:`Verdict` (see the module docstring)."""
    every = [f for f in FAMILIES if all(f in c.families for c in cases)]
    if "truncated" in every and ("maml" in every or not any(c.truncate for c in cases)):
        every.remove("truncated")  # T >= K on every case: that is full back-prop, maml
    if every:
        computes = every[0]
    else:
        computes = "none" if all(c.label in ("none", "raised", "non-finite") for c in cases) else "mixed"
    truncate = _common_truncation(cases) if computes == "truncated" else None
    passed = computes not in ("none", "mixed") and (claim is None or claim == computes)
    summary = _what_it_computes(computes, truncate, cases)
    if claim is not None:
        summary = f"claims {claim}; {summary}{_error_to_claim(claim, computes, passed, cases, target)}"
    notes = _flagged(claim, cases, target)
    if memory_claim is not None:
        growth = (profile or {}).get("memory_growth")
        if growth is None:
            passed, summary = False, summary + f"; claims {memory_claim} memory in K, but the profile was not measured"
        elif growth != memory_claim:
            passed, summary = False, summary + f"; claims {memory_claim} memory in K, measured {growth}"
        else:
            summary += f"; memory {growth} in K, as claimed"
    return Verdict(
        target.name, target.shape, claim, computes, passed, summary, list(cases), truncate, memory_claim, profile, notes
    )


def _what_it_computes(computes: str, truncate: int | None, cases) -> str:
    n = len(cases)
    if computes == "none":
        return f"computes none of the candidates on any case (0 of {n}): {DESCRIPTIONS['none']}"
    if computes == "mixed":
        return "computes different things on different cases: " + ", ".join(
            f"{label} on {k} of {n}" for label, k in _label_counts(cases)
        )
    return f"computes {computes} on every case ({n} of {n}): {_describe(computes, truncate, cases)}"


def _error_to_claim(claim: str, computes: str, passed: bool, cases, target) -> str:
    """The claimed candidate's error range (a failure), or the worst case (a pass)."""
    errors = [(c.error_to(claim), c) for c in cases if c.error_to(claim) is not None]
    if not errors:
        return ""
    low, high = min(e for e, _ in errors), max(errors, key=lambda ec: ec[0])
    if passed and claim == "implicit":
        at = f"its default {target.iteration_param}" if target.iteration_param else "its default"
        return f"; at {at} its error to the exact solve is up to {high[0]:.1e} (case {high[1].index})"
    if passed:
        return f"; worst relative error to it {high[0]:.1e} (case {high[1].index})"
    return f"; its relative error to {claim} is {low:.2g}..{high[0]:.2g} (worst: case {high[1].index})"


def _flagged(claim: str | None, cases, target) -> list[str]:
    """Notes on the first case where the claim fails and, for an implicit claim, how its error behaved."""
    notes = []
    failing = [c for c in cases if claim is not None and claim not in c.families]
    if failing:
        first = failing[0]
        why = first.message if first.status != "ok" else f"it computes {first.label}"
        if first.status == "ok" and not first.families and first.closest:
            why += f" (nearest: {first.closest}, relative error {first.errors[first.closest]:.2g}"
            why += f"; it is {first.scale:.4g} x that)" if first.scale is not None else ")"
        notes.append(f"first case flagged: case {first.index} ({first.case.describe()}): {why}")
    if claim == "implicit" and failing and failing[0].iterations:
        sweep = failing[0].iterations
        notes.append(
            f"its error to the exact linear solve at phi_K does not fall as {target.iteration_param} grows: "
            + ", ".join(f"{n}: {e:.2g}" for n, e in sweep)
        )
    return notes


def _describe(computes: str, truncate: int | None, cases) -> str:
    if computes == "truncated":
        heads = {head for c in cases for head in c.heads}
        how = (
            "phi_{K-T} held constant"
            if heads == {"held"}
            else "the first K - T steps first-order"
            if heads == {"first_order"}
            else "mixed heads"
        )
        t = (
            f"T = {truncate}"
            if truncate is not None
            else "T varies: " + ", ".join(f"{c.truncate} at K = {c.case.inner_steps}" for c in cases if c.truncate)
        )
        return f"back-prop through the last T inner steps, {t}, {how}"
    if computes == "implicit":
        sweeps = [c for c in cases if c.iterations]
        if sweeps:
            last = max(c.iterations[-1][1] for c in sweeps)
            first = max(c.iterations[0][1] for c in sweeps)
            return (
                DESCRIPTIONS["implicit"]
                + f"; its error to the exact solve falls from {first:.1e} to {last:.1e} as the iterations grow"
            )
        return DESCRIPTIONS["implicit"] + " (no iteration count declared, so whether its error falls is not seen)"
    return DESCRIPTIONS.get(computes, "")


def _label_counts(cases) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for c in cases:
        counts[c.label] = counts.get(c.label, 0) + 1
    return sorted(counts.items(), key=lambda kv: -kv[1])
