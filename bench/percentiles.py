"""Percentiles that say how many samples they stand on.

A percentile from a handful of samples is mostly the extreme sample: with the nearest-rank
definition the p95 of fewer than 20 samples is the maximum, and a bench that prints "p95"
then reports its slowest run under another name. :func:`distribution` therefore gives the
sample count and the maximum beside every percentile, and marks a p95 that is the maximum
(``p95_is_max``), so a reader sees what the figure stands for.
"""

from __future__ import annotations

from collections.abc import Sequence


def rank(n: int, percent: int) -> int:
    """The 1-based nearest rank of the ``percent`` percentile among ``n`` samples (integer
    arithmetic, so 95 % of 20 is exactly rank 19, not a float's 18.999...)."""
    if n <= 0:
        raise ValueError("no samples")
    if not 0 < percent <= 100:
        raise ValueError(f"percentile {percent} outside (0, 100]")
    return max(1, -(-percent * n // 100))


def nearest_rank(values: Sequence[float], percent: int) -> float:
    """The smallest sample with at least ``percent`` % of the samples at or below it."""
    return sorted(values)[rank(len(values), percent) - 1]


def distribution(values: Sequence[float], *, digits: int = 1) -> dict[str, object]:
    """``samples``, ``p50``, ``p95``, ``max`` and ``p95_is_max`` of ``values`` (None if empty).

    ``p95_is_max`` is true when there are too few samples (fewer than 20) for the p95 to be
    anything but the slowest sample.
    """
    if not values:
        return {"samples": 0, "p50": None, "p95": None, "max": None, "p95_is_max": None}
    n = len(values)
    return {
        "samples": n,
        "p50": round(nearest_rank(values, 50), digits),
        "p95": round(nearest_rank(values, 95), digits),
        "max": round(max(values), digits),
        "p95_is_max": rank(n, 95) == n,
    }
