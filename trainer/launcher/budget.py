"""One dollar budget shared by several launches (`launch A.yaml B.yaml --total-budget`)."""

from __future__ import annotations

import threading
from collections.abc import Callable


class SharedBudget:
    """Dollars spent by every launch registered (each as a callable that says what it has
    spent so far), against one limit."""

    def __init__(self, limit_usd: float) -> None:
        self.limit_usd = limit_usd
        self._spenders: list[Callable[[], float]] = []
        self._lock = threading.Lock()

    def add(self, spent: Callable[[], float]) -> None:
        with self._lock:
            self._spenders.append(spent)

    def spent(self) -> float:
        with self._lock:
            spenders = list(self._spenders)
        return sum(spent() for spent in spenders)

    def check(self, _own_spent: float) -> str | None:
        """Why every job must stop now (the total is spent), or None."""
        total = self.spent()
        if total >= self.limit_usd:
            return (
                f"the total budget is spent: ${total:.4f} of ${self.limit_usd:g} "
                f"across {len(self._spenders)} job(s)"
            )
        return None
