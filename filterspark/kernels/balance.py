"""Spreading weighted work items over Spark tasks so that tasks finish together."""
from __future__ import annotations

from typing import Sequence, TypeVar

T = TypeVar("T")


def balanced_groups(items: Sequence[tuple[T, int]], n_groups: int) -> list[list[T]]:
    """Longest-processing-time-first: ``(item, weight)`` pairs, heaviest first, each onto the
    currently lightest of ``n_groups`` groups (ties: the first). Returns the non-empty
    groups, heaviest first."""
    n_groups = max(1, n_groups)
    loads = [0] * n_groups
    groups: list[list[T]] = [[] for _ in range(n_groups)]
    for item, weight in sorted(items, key=lambda pair: -pair[1]):
        i = loads.index(min(loads))
        groups[i].append(item)
        loads[i] += max(weight, 1)
    order = sorted(range(n_groups), key=lambda i: -loads[i])
    return [groups[i] for i in order if groups[i]]
