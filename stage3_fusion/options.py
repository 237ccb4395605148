"""Typed options of stage 3 (their values and meaning: ``configs/pipeline.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from rvos.options import check_declared, fraction


@dataclass
class FusionOptions:
    """The ``stage3`` section: the conditional fusion rule's two fractions.

    Attributes:
        shrink_ratio: ``[num, den]``: SAM 2's box counts as smaller below ``num/den`` of stage 1's.
        majority: ``[num, den]``: multi-object when the smaller frames exceed ``num/den`` of the
            frames where both masks are non-empty.
    """

    SECTION = "stage3"

    shrink_ratio: list[int] = fraction()
    majority: list[int] = fraction()

    def __post_init__(self) -> None:
        check_declared(self)

    @property
    def shrink(self) -> Fraction:
        return Fraction(*self.shrink_ratio)

    @property
    def major(self) -> Fraction:
        return Fraction(*self.majority)
