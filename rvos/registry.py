"""Registries: the named entries a benchmark picks in ``configs/data/<name>.yaml``.

Each plug-in point of the data layer is one :class:`Registry`: split layouts
(:data:`rvos.splits.SPLIT_LAYOUTS`), stage-1 answer rules (:data:`rvos.proposals.ANSWER_RULES`),
archive writers (:data:`rvos.archive.ARCHIVE_WRITERS`) and metrics
(:data:`rvos.evaluation.METRICS`). Another benchmark's entry is one more key, added where its
registry is defined so that worker processes see it too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """Entries of one kind by name; :meth:`lookup` refuses an unknown name in one line.

    Args:
        kind: what an entry is, for messages (``"split layout"``).
        entries: ``name -> entry``.
    """

    def __init__(self, kind: str, entries: Mapping[str, T]) -> None:
        super().__init__(entries)
        self.kind = kind

    def lookup(self, name: str) -> T:
        """The entry registered as ``name``.

        Raises:
            ValueError: ``unknown <kind> '<name>' (known: <names, sorted>)``.
        """
        try:
            return self[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r} (known: {', '.join(sorted(self))})"
            ) from None
