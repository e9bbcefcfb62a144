"""One replica of a cluster: publish what it measured, lead or follow, every control tick.

Every tick each replica
1. publishes its own monitor's cumulative totals (policies.replicas);
2. renews its lease when it leads, or takes the lease when nobody holds it
   (router.cluster.shared: a new epoch each time);
3. as the **leader**: adds every replica's new measurements into the cluster
   monitor, carries out the commands sent to any replica, runs the policy
   and the switching controller on the cluster snapshot, and writes the
   controller's state with its epoch; a write refused (a later epoch exists)
   makes it step down at once. On taking over, it restores the controller
   from the stored state first, so a transition under way carries on from
   its step;
4. as a **follower**: applies the newest stored state to its own controller
   (the data plane draws from its weights) and copies the leader's new
   decisions into its own log.

Redis unreachable: the replica keeps the weights it has (nothing flaps),
says so (`connected` false on /status and in metrics), and a leader steps
down; it all comes back by itself on the first tick Redis answers again.

A `/reload` sent to any replica raises a counter in Redis; every replica
reloads its own config file when it sees the counter move.

In a cluster the control clock is the wall clock (the same seconds on every
host), so the times in a stored controller state mean the same to the next
leader. What must not live here: Redis commands (router.cluster.shared), the
merging and the controller (policies).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from configs.assembly import build_control_loop
from configs.schema import ClusterConfig
from policies.actions import Action, Command, CommandRejected, Force, Pause, Resume, Rollback
from policies.control import ControlLoop
from policies.replicas import ClusterMerge, published
from router.cluster.shared import SharedState
from router.logs import event

if TYPE_CHECKING:
    from router.state import RouterState
    from router.telemetry.decisions import DecisionLog

logger = logging.getLogger("modeshift.cluster")
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
STALE_TICKS = 5  # a replica that has not published for this many ticks no longer counts in the gauges
FORGET_TICKS = 300  # ... and is dropped from the shared hash after this many
COMMANDS = {"Force": Force, "Pause": Pause, "Resume": Resume, "Rollback": Rollback}


def default_replica_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class ClusterMember:
    def __init__(
        self, config: ClusterConfig, *, state: Callable[[], RouterState], decisions: DecisionLog,
        reload: Callable[[], object], wall_clock: Callable[[], float],
    ):  # fmt: skip
        self.config = config
        self.state_now = state  # the router's state as it is now (a reload replaces it)
        self.decisions = decisions  # the router's decision log: the cluster's decisions go in it
        self.reload = reload  # reload the config file (raises ConfigError, the old config serving on)
        self.wall_clock = wall_clock  # for publication times only; control time comes in as now_s
        self.replica = config.replica or default_replica_name()
        self.shared = SharedState(config.redis_url, config.name, timeout_s=config.redis_timeout_s)
        self.epoch = 0  # of this replica's leadership; 0: following
        self.leader: str | None = None
        self.leader_epoch = 0
        self.connected = False
        self.seq = 0  # of the state this replica wrote or applied last
        self.applied: tuple[int, int] = (0, 0)  # (epoch, seq) of the stored state applied last
        self.decisions_seen: tuple[int, int] = (0, 0)  # (epoch, seq) of the leader's last decision in this log
        self.reloads_seen: int | None = None
        self.replicas: list[dict[str, Any]] = []  # for /status: name, age, leader
        self._loop: ControlLoop | None = None  # the cluster loop, while this replica leads
        self._merge: ClusterMerge | None = None
        self._built_for: object = None  # the config the cluster loop was built for

    @property
    def leading(self) -> bool:
        return self.epoch > 0

    def tick_s(self) -> float:
        return self.state_now().config.switching.tick_s

    async def tick(self, now_s: float) -> list[Action]:
        """One control tick; the actions this replica took as the leader (none as a follower), in the
        router's decision log already, with the leader, its epoch and the state's seq."""
        state = self.state_now()
        for lane in state.lanes.values():
            lane.window.queue_depth = lane.waiting
        state.control.last_snapshot = state.control.snapshot(now_s)  # the data plane's own view (admission)
        try:
            actions = await self._tick(now_s)
        except UNREACHABLE as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # redis-py turns a cancellation during a command into a connection error: the router is
                # stopping, and the ticker must stop with it.
                raise asyncio.CancelledError from exc
            self._lost(exc)
            return []
        if not self.connected:
            event(logger, "cluster_connected", logging.INFO, replica=self.replica)
        self.connected = True
        return actions

    def _lost(self, exc: BaseException) -> None:
        if self.connected or self.leading:
            event(logger, "cluster_unreachable", logging.WARNING, replica=self.replica, error=repr(exc),
                  weights="kept as they are")  # fmt: skip
        self.connected = False
        self._step_down()

    def _step_down(self) -> None:
        if self.leading:
            event(logger, "cluster_step_down", logging.WARNING, replica=self.replica, epoch=self.epoch)
        self.epoch = 0
        self._loop = self._merge = None

    async def _tick(self, now_s: float) -> list[Action]:
        shared, state = self.shared, self.state_now()
        await shared.publish(self.replica, self.wall_clock(), published(state.control.monitor))
        await self._follow_reloads()
        lease_ms = int(self.config.lease_ticks * self.tick_s() * 1000)
        if self.leading and not await shared.renew(self.replica, self.epoch, lease_ms):
            self._step_down()
        if not self.leading and (epoch := await shared.acquire(self.replica, lease_ms)):
            await self._take_over(epoch, now_s)
        held = await shared.leader()
        self.leader, self.leader_epoch = held if held is not None else (None, 0)
        publications = await shared.publications()
        self._list_replicas(publications)
        if not self.leading:
            await self._follow(now_s)
            return []
        return await self._lead(now_s, publications)

    async def _take_over(self, epoch: int, now_s: float) -> None:
        self.epoch = epoch
        self._build_loop(now_s)
        stored = await self.shared.read_state()
        if stored is not None:
            self.state_now().control.controller.restore(stored["controller"], self._loop.snapshot(now_s))
            self.seq = int(stored["seq"])
        event(logger, "cluster_leader", logging.INFO, replica=self.replica, epoch=epoch,
              resumed=stored is not None)  # fmt: skip

    def _build_loop(self, now_s: float) -> None:
        """The leader's cluster loop: a monitor of the whole cluster's figures, the replica's own policy and
        controller (the data plane draws from that controller's weights)."""
        state = self.state_now()
        fresh = build_control_loop(state.config, now_s=now_s, rng=random.Random(state.config.server.seed))
        self._loop = ControlLoop(fresh.monitor, state.control.policy, state.control.controller)
        self._merge = ClusterMerge(fresh.monitor)
        self._built_for = state.config

    async def _lead(self, now_s: float, publications: dict[str, dict[str, Any]]) -> list[Action]:
        if self._built_for is not self.state_now().config:  # a reload: new lanes, costs or controller
            self._build_loop(now_s)
        loop, merge = self._loop, self._merge
        live, stale = {}, []
        wall = self.wall_clock()
        for replica, publication in publications.items():
            age_ticks = (wall - float(publication["at"])) / self.tick_s()
            if age_ticks > FORGET_TICKS:
                stale.append(replica)
                merge.forget(replica)
                continue
            merge.absorb(replica, publication["figures"], now_s)
            if age_ticks <= STALE_TICKS:
                live[replica] = publication["figures"]
        merge.set_gauges(live)
        await self.shared.forget(stale)
        actions: list[Action] = []
        answers = []
        for sent in await self.shared.take_commands():
            done = self._command(sent, now_s)
            actions += done
            answers.append((sent["id"], done))
        actions += loop.tick(now_s)
        self.seq += 1
        if not await self.shared.write_state(self.replica, self.epoch, self.seq, loop.controller.record()):
            self._step_down()  # a later leader exists: nothing of this tick counts
            return []
        records = [
            {**action.as_record(), "leader": self.replica, "epoch": self.epoch, "seq": self.seq} for action in actions
        ]
        await self.shared.add_decisions(records, self.state_now().config.telemetry.decisions_kept)
        for record in records:  # this replica's log holds the cluster's decisions, as every follower's does
            self.decisions.add(record)
        self.decisions_seen = (self.epoch, self.seq)
        for command_id, done in answers:
            await self.shared.answer_command(command_id, {"actions": [a.as_record() for a in done]}, keep_s=60)
        self.applied = (self.epoch, self.seq)
        return actions

    def _command(self, sent: dict[str, Any], now_s: float) -> list[Action]:
        kind = COMMANDS.get(sent.get("kind", ""))
        if kind is None:
            return [CommandRejected(at_s=now_s, reason=f"unknown command {sent.get('kind')!r}", command="unknown")]
        command: Command = kind(**sent["args"])
        return self._loop.command(command, now_s)

    async def _follow(self, now_s: float) -> None:
        stored = await self.shared.read_state()
        if stored is not None and (int(stored["epoch"]), int(stored["seq"])) > self.applied:
            control = self.state_now().control
            control.controller.restore(stored["controller"], control.last_snapshot or control.snapshot(now_s))
            self.applied = (int(stored["epoch"]), int(stored["seq"]))
        for record in await self.shared.decisions(self.state_now().config.telemetry.decisions_kept):
            key = (int(record.get("epoch", 0)), int(record.get("seq", 0)))
            if key > self.decisions_seen:
                self.decisions.add(record)
                self.decisions_seen = key

    async def _follow_reloads(self) -> None:
        reloads = await self.shared.reloads()
        if self.reloads_seen is not None and reloads > self.reloads_seen:
            try:
                self.reload()
            except Exception as exc:  # the old config keeps serving, as for a local reload
                event(logger, "cluster_reload_failed", logging.WARNING, replica=self.replica, error=str(exc))
        self.reloads_seen = reloads

    def _list_replicas(self, publications: dict[str, dict[str, Any]]) -> None:
        wall = self.wall_clock()
        self.replicas = sorted(
            ({"replica": name, "last_seen_s": round(wall - float(p["at"]), 3), "leader": name == self.leader}
             for name, p in publications.items()),
            key=lambda r: r["replica"],
        )  # fmt: skip

    async def command(self, command: Command) -> list[dict[str, Any]]:
        """Send a command to the leader, wherever it runs, and wait for what it did (at most 3 ticks)."""
        command_id = secrets.token_hex(8)
        args = {name: getattr(command, name) for name in command.__dataclass_fields__}
        await self.shared.send_command({"id": command_id, "kind": type(command).__name__, "args": args})
        async with asyncio.timeout(3 * self.tick_s() + 1.0):
            while (answer := await self.shared.answer(command_id)) is None:
                await asyncio.sleep(min(0.05, self.tick_s() / 4))
        return answer["actions"]

    async def ask_reload(self) -> None:
        """Every other replica reloads its file at its next tick (this one has reloaded already)."""
        self.reloads_seen = await self.shared.ask_reload()

    def view(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "replica": self.replica,
            "leader": self.leader,
            "leading": self.leading,
            "epoch": self.leader_epoch,
            "connected": self.connected,
            "replicas": self.replicas,
        }

    async def close(self) -> None:
        if self.leading:
            try:
                await self.shared.release(self.replica, self.epoch)
            except UNREACHABLE:
                pass
        await self.shared.close()
