"""Square kernel shapes ``k x k``: which sizes go to the ``kernels`` table (3x3 stays in
``filters``), and the ``KxK`` names an analysis run is of.

One parser for the ``kernels`` option of extraction and import: ``all`` (every square
``k`` with ``1 < k != 3``, ``k <= MAX_KERNEL_SIZE``), ``none``, or a comma list (``5,7``);
one for the ``kernel`` of an analysis (``analyze --kernel 5x5``), whose name is the
``kernel`` column of the analysis tables.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from filterspark.errors import OptionsError

#: The largest k of ``all`` (larger sizes can be named explicitly).
MAX_KERNEL_SIZE = 11
#: The sizes ``all`` selects.
ALL_KERNEL_SIZES: tuple[int, ...] = tuple(k for k in range(2, MAX_KERNEL_SIZE + 1) if k != 3)


def parse_kernel_sizes(value: str | Iterable[int] | None) -> tuple[int, ...]:
    """``all`` / ``none`` / ``"5,7"`` / an iterable of ints → the sorted sizes; a clear
    :class:`OptionsError` for 3 (it lives in ``filters``), k < 2 or anything not a size."""
    if value is None:
        return ALL_KERNEL_SIZES
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "all":
            return ALL_KERNEL_SIZES
        if text == "none":
            return ()
        parts = [p.strip() for p in text.split(",")]
        try:
            sizes = [int(p) for p in parts]
        except ValueError:
            raise OptionsError(
                f"kernels must be 'all', 'none' or a comma list of sizes such as '5,7', not {value!r}"
            ) from None
    else:
        sizes = [int(k) for k in value]
    for k in sizes:
        if k == 3:
            raise OptionsError("kernels: 3x3 kernels are always extracted into the filters table; leave 3 out")
        if k < 2:
            raise OptionsError(f"kernels: sizes must be at least 2 (1x1 kernels are counted in layers only), not {k}")
    return tuple(sorted(set(sizes)))


def format_kernel_sizes(sizes: tuple[int, ...]) -> str:
    """The option value that parses back to ``sizes`` (``all``, ``none`` or ``5,7``)."""
    if tuple(sizes) == ALL_KERNEL_SIZES:
        return "all"
    return ",".join(map(str, sizes)) if sizes else "none"


def square_sizes(shape_counts: Mapping[str, int] | None) -> tuple[int, ...]:
    """The square sizes ``k`` (k != 3, k > 1) present in a ``kernel_shape_counts`` map (``"5x5": n``)."""
    found = set()
    for shape, count in (shape_counts or {}).items():
        h, _, w = shape.partition("x")
        if count and h == w and h.isdigit() and int(h) not in (1, 3):
            found.add(int(h))
    return tuple(sorted(found))


def selected_sizes(selection: tuple[int, ...], shape_counts: Mapping[str, int] | None) -> tuple[int, ...]:
    """The sizes of ``selection`` a model with ``shape_counts`` has: what its ``kernels`` rows hold."""
    return tuple(k for k in square_sizes(shape_counts) if k in selection)


#: The kernel shape of the published analysis (the ``filters`` table).
DEFAULT_KERNEL = "3x3"


def kernel_name(k: int) -> str:
    """The ``kernel`` value of k x k kernels (``"5x5"``)."""
    return f"{k}x{k}"


def parse_kernel(kernel: str | int) -> int:
    """The side ``k`` of a ``--kernel`` value: ``"5x5"`` (or ``"5"``, or 5); square, k >= 2."""
    text = str(kernel).strip().lower()
    side, _, other = text.partition("x")
    if not side.isdigit() or (other and other != side) or int(side) < 2:
        raise OptionsError(f"kernel must be a square shape KxK with K >= 2 (3x3, 5x5, 7x7), not {kernel!r}")
    return int(side)
