"""Go's text/tabwriter, as istioctl uses it, so tables line up byte for byte.

istioctl writes rows of tab-terminated cells through
``tabwriter.NewWriter(out, minwidth=0, tabwidth=8, padding, ' ', 0)``: a column is as wide
as its widest cell plus ``padding``, computed over each block of consecutive lines that
have that column; the text after a line's last tab is not part of any column and is
written as is (so a row can end in padding spaces when its last cell is empty).
Source: https://pkg.go.dev/text/tabwriter (format/writeLines).
"""

from __future__ import annotations

from collections.abc import Sequence


def tabwrite(lines: Sequence[str], padding: int, minwidth: int = 0) -> str:
    """Render lines whose cells are separated by tabs (Go tabwriter, flags 0)."""
    rows = [line.split("\t") for line in lines]
    widths: list[list[int]] = [[] for _ in rows]  # per line, width of each column cell

    def fmt(line0: int, line1: int, column: int) -> None:
        this = line0
        while this < line1:
            if column >= len(rows[this]) - 1:
                this += 1
                continue
            # a column block starts at `this`: lines that have a cell in `column`
            start = this
            width = minwidth
            while this < line1 and column < len(rows[this]) - 1:
                width = max(width, len(rows[this][column]) + padding)
                this += 1
            for i in range(start, this):
                widths[i].append(width)
            fmt(start, this, column + 1)

    fmt(0, len(rows), 0)
    out = []
    for row, ws in zip(rows, widths, strict=True):
        text = "".join(cell.ljust(w) for cell, w in zip(row[:-1], ws, strict=True))
        out.append(text + row[-1])
    return "\n".join(out) + "\n" if out else ""
