"""One autoscaled lane's replicas during a simulated run: ready, starting, and the replica-seconds paid.

The control loop's capacity rule (policies.control.capacity) says each tick how many
replicas the lane wants, as it tells the live router; the run plays the
autoscaler the router's figure is for:

- more wanted: each new replica starts now and answers `cold_start` later
  (`want` returns when), and is paid for from now: a GPU loading its model
  is billed;
- fewer wanted: replicas still starting are called off first (the newest
  first), then ready ones go. A replica that goes takes its servers with it
  as each finishes the call it has (`want` returns how many servers to take
  away; the engine takes idle ones at once and the rest as they free).

What the lane paid is the integral of its ready and starting replicas over
time (`replica_s`), whatever traffic they served. Pure bookkeeping: the
engine (simulator.engine) owns the servers and the event heap.
"""

from __future__ import annotations

from collections import deque


class LaneScale:
    def __init__(self, ready: int, concurrency: int, cold_start_s: float, now_s: float = 0.0):
        self.ready = ready
        self.concurrency = concurrency
        self.cold_start_s = cold_start_s
        self.starting: deque[float] = deque()  # when each replica asked for will answer, oldest first
        self.replica_s = 0.0
        self._since_s = now_s

    @property
    def paid(self) -> int:
        """Replicas billed now: ready and starting."""
        return self.ready + len(self.starting)

    def want(self, now_s: float, desired: int) -> tuple[list[float], int]:
        """Move toward `desired`: (when each replica started now will answer, servers to take away now)."""
        self._account(now_s)
        started = []
        while self.paid < desired:
            self.starting.append(now_s + self.cold_start_s)
            started.append(now_s + self.cold_start_s)
        while self.paid > desired and self.starting:
            self.starting.pop()  # called off before it answered: its event finds it gone
        removed = 0
        while self.paid > desired and self.ready > 0:
            self.ready -= 1
            removed += self.concurrency
        return started, removed

    def answered(self, now_s: float, due_s: float) -> bool:
        """The replica due at `due_s` is up at `now_s`: True when it still counts (False: it was called off)."""
        if due_s not in self.starting:
            return False
        self._account(now_s)
        self.starting.remove(due_s)
        self.ready += 1
        return True

    def hours(self, end_s: float) -> float:
        """Replica-hours paid from the start of the run to `end_s`."""
        self._account(end_s)
        return self.replica_s / 3600.0

    def _account(self, now_s: float) -> None:
        if now_s > self._since_s:
            self.replica_s += self.paid * (now_s - self._since_s)
            self._since_s = now_s
