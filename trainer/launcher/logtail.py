"""Following a container log through Vast.ai's snapshots: new lines only, and the result sentinel.

Vast.ai has no log stream, only the last N lines on request. Each snapshot is matched against
the end of the previous one (the longest overlap wins), so repeated requests print every
line once; when the snapshots no longer overlap, some lines were missed and a marker says so.
"""

from __future__ import annotations

from trainer.store.records import ResultSentinel

GAP = "… (lines missed between two log snapshots)"


class LogTail:
    """Feed snapshots to `update`; it returns the lines not seen before."""

    def __init__(self, keep: int = 2_000) -> None:
        self.keep = keep
        self.seen: list[str] = []
        self.result: ResultSentinel | None = None
        """The container's last-line report (`QUANTLAB_RESULT {...}`), once it appeared."""

    def update(self, snapshot: str) -> list[str]:
        lines = [line for line in snapshot.splitlines() if line.strip()]
        if not lines:
            return []
        overlap = _overlap(self.seen, lines)
        fresh = lines[overlap:]
        if self.seen and overlap == 0 and not _contains(self.seen, lines):
            fresh = [GAP, *lines]
        elif self.seen and overlap == 0:
            fresh = []
        self.seen = (self.seen + [line for line in fresh if line != GAP])[-self.keep :]
        self._note_result(fresh)
        return fresh

    def catch_up(self, whole: str, most: int = 50) -> list[str]:
        """The lines of a whole log (the copy the container ships to the store) after the
        newest line already seen; its last `most` lines, after a gap marker, when none of
        them was seen."""
        lines = [line for line in whole.splitlines() if line.strip()]
        where = {line: i for i, line in enumerate(lines)}
        last = next((where[line] for line in reversed(self.seen) if line in where), None)
        if last is not None:
            fresh = lines[last + 1 :]
        else:
            fresh = lines[-most:]
            if self.seen or len(lines) > most:
                fresh = [GAP, *fresh]
        self.seen = (self.seen + [line for line in fresh if line != GAP])[-self.keep :]
        self._note_result(fresh)
        return fresh

    def _note_result(self, lines: list[str]) -> None:
        for line in lines:
            found = ResultSentinel.parse_line(line)
            if found is not None:
                self.result = found


def _overlap(old: list[str], new: list[str]) -> int:
    """The largest k with old[-k:] == new[:k]."""
    for k in range(min(len(old), len(new)), 0, -1):
        if old[-k:] == new[:k]:
            return k
    return 0


def _contains(old: list[str], new: list[str]) -> bool:
    """Whether `new` is a stretch of `old` (an older snapshot arriving late)."""
    n = len(new)
    return any(old[i : i + n] == new for i in range(len(old) - n + 1))
