"""Reading the score tables the commands print, checking their layout and rounding on the way."""

from __future__ import annotations

import re

CELL = re.compile(r"\S+")
PERCENT = re.compile(r"-?\d+\.\d\d")  # a score in percent, two decimals


def read_table(text: str, *, row_label: bool = False) -> list[dict[str, str]]:
    """The rows of a text table as ``{column: cell}``, in order.

    Checks that each row has one cell per column and that every cell ends where its column's
    header ends (right-aligned under it). With ``row_label``, each row starts with a label at
    the start of the line (an archive, an annotator), returned as ``row[""]``; the header names
    it, or leaves it blank.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) >= 2, f"a header and at least one row expected:\n{text}"
    columns = [(match.group(), match.end()) for match in CELL.finditer(lines[0])]
    if row_label and not lines[0][0].isspace():
        columns = columns[1:]  # the label column's own header
    rows = []
    for line in lines[1:]:
        cells = list(CELL.finditer(line))
        row = {}
        if row_label:
            label = cells.pop(0)
            assert label.start() == 0, f"row label not at the start of the line: {line!r}"
            row[""] = label.group()
        ends = [cell.end() for cell in cells]
        assert ends == [end for _, end in columns], f"cells not under their headers:\n{text}"
        row.update({name: cell.group() for (name, _), cell in zip(columns, cells, strict=True)})
        rows.append(row)
    return rows


def assert_percent(cell: str, fraction: float) -> None:
    """``cell`` shows ``fraction`` in percent with two decimals, correctly rounded."""
    assert PERCENT.fullmatch(cell), f"{cell!r} is not a percentage with two decimals"
    assert abs(float(cell) - 100 * fraction) <= 0.005 + 1e-9, f"{cell} is not {100 * fraction}%"
