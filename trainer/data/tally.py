"""The row count of one pass over a split: the row groups and rows it planned, what it read,
and where each row read went, checked against each other when the pass ends.

A row read is a sample (used), dropped for a non-finite value in its label or window, short
of the earlier rows its window needs, or outside the split's window (the purge gap, the
other split, the history before the split that windows reach back to)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from trainer.data.blocks import Block, Unit
from trainer.errors import DataError
from trainer.store.records import PassRows


@dataclass
class Tally:
    """Counts of one pass, block by block. A pass over a set of row groups must read every
    one of them, each with the rows its footer states, and place no more rows than it read."""

    name: str
    """What the pass is, for messages: `training`, `validation`, `feature statistics`."""
    planned_groups: int = 0
    planned: int = 0
    groups: int = 0
    read: int = 0
    dropped: int = 0
    short: int = 0
    used: int = 0
    resumed: bool = False
    """The pass began where an earlier one stopped: windows across its first row groups'
    seams may place rows that the earlier pass read."""
    wrong: list[str] = field(default_factory=list)
    """Row groups that decoded to another number of rows than their footer states."""

    @classmethod
    def of(cls, name: str, units: Sequence[Unit]) -> Tally:
        return cls(name).plan(units)

    def plan(self, units: Sequence[Unit]) -> Tally:
        self.planned_groups, self.planned = len(units), sum(u.rows for u in units)
        return self

    def add(self, unit: Unit, block: Block, where: str, samples: bool = True) -> None:
        """One row group read (`where`: its file, for messages), and, with `samples`, the
        samples it serves placed."""
        self.groups += 1
        self.read += block.stored
        if block.stored != unit.rows:
            self.wrong.append(
                f"{where}: row group {unit.group} decoded {block.stored} rows, its footer "
                f"states {unit.rows}"
            )
        if samples:
            self.place(len(block.served), block.dropped, block.short)

    def place(self, used: int, dropped: int, short: int) -> None:
        """Rows read that became samples, or were dropped, or were short of history: from
        a block, or from the windows that a pass cuts across its blocks."""
        self.used += used
        self.dropped += dropped
        self.short += short

    @property
    def outside(self) -> int:
        return self.read - self.dropped - self.short - self.used

    @property
    def complete(self) -> bool:
        return self.groups == self.planned_groups and self.read == self.planned

    def check(self) -> None:
        """The pass ended: it read every planned row group, whole, and placed no row twice.
        A DataError otherwise: the data changed under the job, or a pass stopped early."""
        problems = list(self.wrong)
        if self.groups != self.planned_groups:
            problems.append(
                f"the {self.name} pass read {self.groups} of its {self.planned_groups} "
                "planned row groups"
            )
        elif self.read != self.planned:
            problems.append(
                f"the {self.name} pass read {self.read} rows; the footers of its row groups "
                f"state {self.planned}"
            )
        if self.outside < 0 and not self.resumed:
            problems.append(f"the {self.name} pass placed more rows than it read: {self}")
        if problems:
            raise DataError(f"the {self.name} pass did not cover its planned rows", problems)

    def record(self) -> PassRows:
        return PassRows(
            row_groups=self.planned_groups,
            planned=self.planned,
            read=self.read,
            outside=self.outside,
            dropped=self.dropped,
            short=self.short,
            used=self.used,
        )
