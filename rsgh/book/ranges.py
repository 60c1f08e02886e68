"""Where a value lies in a searched range: 0 at its low end, 1 at its high end, on the scale that treats the
range's ends alike (log scale for a log range, log-odds for a probability, else linear). The edge rule of the
studies (:func:`rsgh.book.study.edge_values`) and the study pages' figures read positions from here."""

from __future__ import annotations

import math

# A probability's two ends are both natural bounds (0 keeps no bit on, 1 every bit): where its best value lies
# in its range is measured in log-odds, which treats both ends alike (a log scale crowds 0.5..0.999 into the
# top tenth of 1e-3..0.999, so an unremarkable 0.85 would count as an edge). The sampler still draws prior on
# the scale RANGES gives.
PROBABILITIES = {"prior"}


def position(name: str, value: float, low: float, high: float, log: bool) -> float:
    """Where ``value`` of the parameter ``name`` lies in [low, high]: 0 at low, 1 at high; in log-odds for a
    probability (:data:`PROBABILITIES`), else in log scale for a log range, else linearly."""
    if name in PROBABILITIES:
        f = lambda v: math.log(v / (1 - v))  # noqa: E731
    else:
        f = math.log if log else (lambda v: v)
    return (f(value) - f(low)) / (f(high) - f(low))


def position_inverse(name: str, where: float, low: float, high: float, log: bool) -> float:
    """The value at ``where`` (0 at low, 1 at high) on the scale :func:`position` measures ``name`` in."""
    if name in PROBABILITIES:
        f, g = (lambda v: math.log(v / (1 - v))), (lambda u: 1 / (1 + math.exp(-u)))
    elif log:
        f, g = math.log, math.exp
    else:
        f, g = (lambda v: v), (lambda u: u)
    return g(f(low) + where * (f(high) - f(low)))
