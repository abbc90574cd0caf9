"""ranks.csv, a run's rank history: columns step, layer, rank, max_rank.

A layer gets a row at its first projection, then a row only at the projections that change its rank; its
rank holds from a row's step until its next row. Every projection's ranks follow from that, and the file stays
small: TRP projects every few steps and its ranks settle early, so a row per layer per projection made
ResNet-20's file 6 MB after 164 epochs (230 K rows, of which 275 changed a rank); an ImageNet run would
write hundreds. Files written with every row read the same way.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable

from ..files import atomic_write_text

FIELDS = ["step", "layer", "rank", "max_rank"]


def read(path: str | Path) -> list[dict[str, str]] | None:
    """The whole rows of ``path`` in file order; None where there is no such file. A killed process may
    have left its last row cut short: a row counts once its line ending is written (csv ends every row
    with one), so "8,a,4,1" cut from "8,a,4,16" is not read as max_rank 1."""
    path = Path(path)
    if not path.exists():
        return None
    with open(path, newline="") as f:
        text = f.read()
    whole = text[: text.rfind("\n") + 1]
    return [row for row in csv.DictReader(io.StringIO(whole))
            if None not in row and all(row.get(k) not in (None, "") for k in FIELDS) and row["step"].isdigit()]


def _plain(value: Any) -> Any:
    """A tucker2 rank pair as a list, written "[9, 9]" as JSON would (a tuple would read "(9, 9)")."""
    return list(value) if isinstance(value, tuple) else value


def changes(rows: Iterable[dict[str, Any]], last: dict[str, tuple[str, str]] | None = None
            ) -> list[dict[str, Any]]:
    """The rows of ``rows`` that change their layer's (rank, max_rank), given each layer's last value in
    ``last`` (updated in place; empty or None: every layer's first row counts as a change)."""
    last = {} if last is None else last
    kept = []
    for row in rows:
        value = (str(_plain(row["rank"])), str(_plain(row["max_rank"])))
        if last.get(row["layer"]) != value:
            last[row["layer"]] = value
            kept.append(row)
    return kept


def _write(rows: list[dict[str, Any]], header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, FIELDS, extrasaction="ignore")
    if header:
        writer.writeheader()
    writer.writerows({k: _plain(v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


class RankLog:
    """The ranks.csv of a run directory, written by the training process that logs its method's ranks.

    `append` writes the rows that change a rank; `resume` keeps the rows up to a checkpoint's step (the
    later ones will be logged again) and rewrites them in the form above; `restart` removes the file.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._last: dict[str, tuple[str, str]] = {}

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        """Add the rows of a projection (any number of layers and steps, in order)."""
        kept = changes(rows, self._last)
        if kept:
            new = not self.path.exists()
            with open(self.path, "a", newline="") as f:
                f.write(_write(kept, header=new))

    def resume(self, step: int) -> None:
        """Go on from a checkpoint taken after ``step``: drop newer rows and the rows that change nothing."""
        self._last = {}
        rows = read(self.path)
        if rows is None:
            return
        kept = changes((r for r in rows if int(r["step"]) <= step), self._last)
        atomic_write_text(self.path, _write(kept, header=True))

    def restart(self) -> None:
        """Start the history again (rows a killed first session left before any checkpoint)."""
        self._last = {}
        self.path.unlink(missing_ok=True)
