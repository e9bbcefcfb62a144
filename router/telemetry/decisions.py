"""The decision log: every controller action, as a JSON line and in a bounded ring.

Records are `Action.as_record()` (the simulator's audit format) plus the
router's own events (reloads), each logged once as it happens and kept in a
ring of the last `kept` for the admin API.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

from policies.control.actions import Action
from router.logs import event

logger = logging.getLogger("modeshift.decisions")


class DecisionLog:
    def __init__(self, kept: int):
        self.ring: deque[dict[str, Any]] = deque(maxlen=kept)
        self.counts: Counter[str] = Counter()  # records by kind since start (for /metrics)
        self.rollback_causes: Counter[str] = Counter()

    def record(self, actions: Iterable[Action]) -> None:
        for action in actions:
            self.add(action.as_record())

    def add(self, record: dict[str, Any]) -> None:
        self.ring.append(record)
        self.counts[record.get("kind", "")] += 1
        if record.get("kind") == "RolledBack":
            self.rollback_causes[record.get("cause", "")] += 1
        event(logger, "decision", **record)

    def recent(self, n: int | None = None) -> list[dict[str, Any]]:
        records = list(self.ring)
        return records if n is None else records[-n:]

    def resize(self, kept: int) -> None:
        if kept != self.ring.maxlen:
            self.ring = deque(self.ring, maxlen=kept)
