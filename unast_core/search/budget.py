"""What "holds the budget" means, in one place.

A budget is {cost name: fraction of the teacher's cost}. Parameters and memory are exact, so they hold when
the ratio is within the fraction. Latency is measured, and timing on a shared machine is noisy: a measured
ratio holds within `tolerance` (config `search.latency_tolerance`) above its fraction. When the table
under-predicts every searched architecture, the search runs once more with the budget scaled down by the
median measured/predicted ratio (`corrected_budget`); if that corrected budget is out of the pool's reach,
or no architecture holds after it, the fastest measured architecture is kept. When every searched
architecture measures below the budget by more than the tolerance (the table over-predicts), the search runs
once more with the budget loosened by the same median ratio (`loosened_budget`), and its architectures are
kept if they hold: latency nobody asked for is not paid for in quality (on the default teacher at 0.75, three
runs measured 0.715-0.716 for a predicted 0.749-0.750). If they don't hold, the first search's are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from unast_core.errors import InfeasibleBudget

EXACT = 1e-9  # slack on exact costs (float sums)


def within_budget(budget: dict[str, float], ratios: dict[str, float], tolerance: float) -> bool:
    """Every budgeted cost present in `ratios` is within its fraction (latency: plus `tolerance`)."""
    return all(ratios[n] <= v + (tolerance if n == "latency" else EXACT) for n, v in budget.items() if n in ratios)


def corrected_budget(budget: dict[str, float], predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """Scale the latency budget by the median measured/predicted ratio, so that a systematic
    under-prediction of the table is paid for in the search instead of in a missed budget. Never loosens it."""
    factor = sorted(m / p for m, p in zip(measured, predicted))[len(measured) // 2]
    return {**budget, "latency": budget["latency"] / max(factor, 1.0)}


def loosened_budget(budget: dict[str, float], predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """The latency budget divided by the median measured/predicted ratio when that is below 1 (the table
    over-predicts), at most the teacher's own latency. Never tightens it."""
    factor = sorted(m / p for m, p in zip(measured, predicted))[len(measured) // 2]
    return {**budget, "latency": min(budget["latency"] / min(factor, 1.0), 1.0)}


@dataclass(frozen=True)
class Hold:
    """The outcome of holding a latency budget: which search's architectures, their measured ratios, the
    ones kept (indices into `measured`), and the corrected budget searched again (None if not)."""

    found: object
    measured: list[float]
    kept: list[int]
    corrected: dict[str, float] | None = None
    corrected_unreachable: bool = False
    notes: list[str] = field(default_factory=list)


def kept_within(measured: Sequence[float], limit: float) -> list[int]:
    """Indices of the measured ratios within `limit`; the fastest one alone when none is."""
    within = [k for k, m in enumerate(measured) if m <= limit]
    return within or [min(range(len(measured)), key=lambda k: measured[k])]


def hold_latency_budget(budget: dict[str, float], tolerance: float, found: object, predicted: Sequence[float],
                        measure: Callable[[object], list[float]], search: Callable[[dict[str, float]], object]) -> Hold:
    """Measure the searched architectures (`measure(found)` -> latency ratios) and keep those within
    budget + tolerance. If none holds, search once more (`search(corrected)`, which may raise
    InfeasibleBudget) with the corrected budget, and measure again. `predicted` are the first search's
    predicted latency ratios. Whatever happens, at least one architecture is kept: the fastest measured."""
    limit = budget["latency"] + tolerance
    measured = measure(found)
    if any(m <= limit for m in measured):
        if max(measured) < budget["latency"] - tolerance:
            return _reclaim(budget, limit, found, predicted, measured, measure, search)
        kept = kept_within(measured, limit)
        return Hold(found, measured, kept, notes=[
            f"architecture {k} measured latency {m:.3f}, over {limit:.3f}: left out of select"
            for k, m in enumerate(measured) if k not in kept])
    corrected = corrected_budget(budget, predicted, measured)
    notes = [f"measured latency {[round(m, 3) for m in measured]} exceeds predicted "
             f"{[round(p, 3) for p in predicted]}: searching again with latency={corrected['latency']:.3f}"]
    try:
        retry = search(corrected)
    except InfeasibleBudget:
        notes.append(f"corrected budget latency={corrected['latency']:.3f} is unreachable; keeping the fastest "
                     "measured architecture")
        return Hold(found, measured, kept_within(measured, limit), corrected, True, notes)
    again = measure(retry)
    if not any(m <= limit for m in again):
        notes.append(f"after the re-search no architecture measures within {limit:.3f} "
                     f"({[round(m, 3) for m in again]}); keeping the fastest")
    return Hold(retry, again, kept_within(again, limit), corrected, False, notes)


def _reclaim(budget: dict[str, float], limit: float, found: object, predicted: Sequence[float],
             measured: list[float], measure: Callable[[object], list[float]],
             search: Callable[[dict[str, float]], object]) -> Hold:
    """Every architecture measures well under the budget: search once more with the loosened budget and keep
    its architectures that hold; otherwise keep the first search's."""
    loosened = loosened_budget(budget, predicted, measured)
    first = Hold(found, measured, kept_within(measured, limit))
    if loosened["latency"] <= budget["latency"]:
        return first
    notes = [f"measured latency {[round(m, 3) for m in measured]} is under the budget {budget['latency']:.3f} by "
             f"more than the tolerance (predicted {[round(p, 3) for p in predicted]}): searching again with "
             f"latency={loosened['latency']:.3f}"]
    try:
        retry = search(loosened)
    except InfeasibleBudget:
        return Hold(found, measured, first.kept, loosened, True, [*notes, "that search found nothing; keeping "
                                                                           "the first search's architectures"])
    again = measure(retry)
    if any(m <= limit for m in again):
        return Hold(retry, again, kept_within(again, limit), loosened, False, notes)
    notes.append(f"the re-search measures {[round(m, 3) for m in again]}, over {limit:.3f}; keeping the first "
                 "search's architectures")
    return Hold(found, measured, first.kept, loosened, False, notes)
