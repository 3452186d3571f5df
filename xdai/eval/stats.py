"""The statistics of pairwise human evaluation: win rates with intervals, significance, rater agreement.

Pure functions over counts, with no dependency beyond the standard library, so that a report can be checked by
hand. ACUTE-Eval reports win rates with a two-sided binomial test against 50%; we add Wilson score intervals
(they behave at small n and near 0 or 1, where the normal approximation does not) and kappa for agreement.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def wilson_interval(wins: int, n: int, z: float = Z95) -> Interval:
    """The Wilson score interval of a proportion wins/n (95% by default); (0, 1) when n is 0."""
    if n <= 0:
        return Interval(0.0, 1.0)
    p = wins / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(max(0.0, center - half), min(1.0, center + half))


def binomial_two_sided(k: int, n: int, p: float = 0.5) -> float:
    """Exact two-sided binomial test: the probability, under Binomial(n, p), of an outcome no more likely than k."""
    if n <= 0:
        return 1.0
    pmf = [math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(n + 1)]
    observed = pmf[k] * (1 + 1e-7)  # outcomes tied with k in probability count as extreme too
    return min(1.0, sum(q for q in pmf if q <= observed))


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """Agreement of two raters on the same items, beyond chance; None when it is undefined (fewer than 2 items,
    or both raters always gave one and the same label)."""
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: {len(a)} labels against {len(b)}")
    n = len(a)
    if n < 2:
        return None
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[label] * cb[label] for label in set(ca) | set(cb)) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1 - expected)


def fleiss_kappa(items: Sequence[Mapping[Hashable, int]]) -> float | None:
    """Agreement of many raters: `items` holds, per item, how many raters gave each label. Items rated by fewer
    than two raters are left out; the number of raters may differ between items (the usual generalisation:
    each item's agreement is averaged, label shares are pooled). None when undefined."""
    rated = [item for item in items if sum(item.values()) >= 2]
    if not rated:
        return None
    agreement = []
    totals: Counter[Hashable] = Counter()
    for item in rated:
        n = sum(item.values())
        agreement.append((sum(c * c for c in item.values()) - n) / (n * (n - 1)))
        totals.update(item)
    all_ratings = sum(totals.values())
    p_bar = sum(agreement) / len(agreement)
    p_e = sum((c / all_ratings) ** 2 for c in totals.values())
    if p_e >= 1.0:
        return None
    return (p_bar - p_e) / (1 - p_e)
