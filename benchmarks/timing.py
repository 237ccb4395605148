"""Timing helpers of the benchmarks and the GPU check: wall time per component, and tables.

:class:`ComponentTimer` charges each component its *own* time: a timed call inside another
(SAM 2's image encoder inside a tracking step) is taken out of the outer one. On CUDA every
boundary synchronises the device first, so asynchronous kernels are charged to the component
that launched them.
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op off CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _Frame:
    component: str
    start: float
    inner: float = 0.0  # seconds charged to timed calls inside this one


@dataclass
class ComponentTimer:
    """Exclusive wall seconds per component name.

    Attributes:
        device: synchronised at every boundary when it is a CUDA device.
        seconds: ``component -> seconds`` so far.
        calls: ``component -> number of timed calls`` so far.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    _stack: list[_Frame] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)

    @contextlib.contextmanager
    def measure(self, component: str) -> Iterator[None]:
        """Charge the body's wall time, less that of timed calls inside it, to ``component``."""
        synchronize(self.device)
        frame = _Frame(component, time.perf_counter())
        self._stack.append(frame)
        try:
            yield
        finally:
            synchronize(self.device)
            elapsed = time.perf_counter() - frame.start
            self._stack.pop()
            self.seconds[component] = self.seconds.get(component, 0.0) + elapsed - frame.inner
            self.calls[component] = self.calls.get(component, 0) + 1
            if self._stack:
                self._stack[-1].inner += elapsed

    def timed(self, component: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` with every call measured as ``component``."""

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.measure(component):
                return fn(*args, **kwargs)

        return wrapper

    @contextlib.contextmanager
    def patch(self, obj: Any, components: dict[str, str]) -> Iterator[None]:
        """Time the methods ``components`` names (``method -> component``) on the instance
        ``obj`` (instance attributes shadow the class's; removed on exit)."""
        for name, component in components.items():
            setattr(obj, name, self.timed(component, getattr(obj, name)))
        try:
            yield
        finally:
            for name in components:
                delattr(obj, name)

    def total(self) -> float:
        return sum(self.seconds.values())

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def format_seconds(seconds: float) -> str:
    """``12.3 s``, ``0.41 s`` or ``35 ms``."""
    if seconds >= 10:
        return f"{seconds:.1f} s"
    if seconds >= 0.1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.0f} ms"


# A cell that reads as a quantity: a number with an optional unit ("12.3 s", "45%", "1.52x"),
# or "-" for none. Columns of quantities are right-aligned.
_QUANTITY = re.compile(r"^(-|[-+]?\d[\d.,]*(e[-+]?\d+)?( ?[a-zA-Z%]+)?)$")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table, columns padded to their widest cell; columns of quantities (numbers
    with units) are right-aligned, the others left-aligned.

    Raises:
        ValueError: a row with another number of cells than ``headers``.
    """
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    if any(len(row) != len(headers) for row in cells):
        raise ValueError(f"every row needs {len(headers)} cells")
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    right = [
        bool(cells[1:]) and all(_QUANTITY.match(row[i]) or not row[i] for row in cells[1:])
        for i in range(len(headers))
    ]

    def line(row: list[str]) -> str:
        padded = [
            cell.rjust(width) if align else cell.ljust(width)
            for cell, width, align in zip(row, widths, right, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join("-" * (w + 1) + (":" if a else "-") for w, a in zip(widths, right, strict=True))
        + "|"
    )
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def comparison_rows(
    components: Sequence[tuple[str, str]],
    per_expression: ComponentTimer,
    shared: ComponentTimer,
) -> list[list[str]]:
    """Rows ``label | per-expression | share | shared | share`` for each ``(component, label)``
    and the total; a component neither way timed is left out."""
    rows = []
    totals = per_expression.total(), shared.total()
    for component, label in components:
        values = per_expression.seconds.get(component), shared.seconds.get(component)
        if values == (None, None):
            continue
        row = [label]
        for value, total in zip(values, totals, strict=True):
            value = value or 0.0
            row += [format_seconds(value), f"{100 * value / total:.0f}%" if total else "-"]
        rows.append(row)
    rows.append(["total", format_seconds(totals[0]), "100%", format_seconds(totals[1]), "100%"])
    return rows


COMPARISON_HEADERS = ("component", "per-expression way", "share", "shared features", "share")
