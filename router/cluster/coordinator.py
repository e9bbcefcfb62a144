"""One replica of a cluster: publish what it measured, lead or follow, every control tick.

Every tick each replica
1. publishes its own monitor's cumulative totals (policies.control.replicas) with
   its config's shape (router.cluster.records.shape_of);
2. renews its lease when it leads, or takes the lease when nobody holds it
   (router.cluster.shared: a new epoch each time);
3. as the **leader**: adds the new measurements of every replica of its
   shape into the cluster monitor, carries out the commands sent to any
   replica, runs the policy and the switching controller on the cluster
   snapshot, and writes the controller's state with its epoch. A write
   refused (a later leader exists) undoes the tick: the controller goes
   back to the state it had before it, the commands are answered "not
   carried out", and the replica steps down. On taking over, it restores
   the controller from the stored state first, so a transition under way
   carries on from its step;
4. as a **follower**: applies the state the current leader wrote (its
   epoch, this incarnation, this shape) to its own controller (the data
   plane draws from its weights) and copies the leader's new decisions
   into its own log.

Bad records (router.cluster.records) are skipped, counted by kind, and
logged once each; a state of another shape (lanes or modes this replica
does not have) is refused the same way, said in /status (`agrees`) and in
metrics, and the replica serves on with the weights it has. A Redis
restarted empty starts a new incarnation: replicas follow its leader from
epoch 1 whatever epoch they saw before.

Redis unreachable: the replica keeps the weights it has (nothing flaps),
says so (`connected` false on /status and in metrics), and a leader steps
down; it all comes back by itself on the first tick Redis answers again.
Operator commands use a Redis client of their own, and at most
`COMMANDS_WAITING` wait at once, so a flood of them cannot starve the tick.

A `/reload` sent to any replica raises a counter in Redis; every replica
reloads its own config file when it sees the counter move.

Clocks: the control clock is the replica's own monotonic one (the data
plane measures latencies with it too). What the replicas share is wall
time: the stored controller's times are shifted by (wall - monotonic) to be
written and back to be read (policies.control.switching_record.shifted), as are
decision times; publications are stamped with wall time. So a step of one
host's wall clock never freezes its own control or its latencies. What must
not live here: Redis commands (router.cluster.shared), the record formats
(router.cluster.records), the merging and the controller (policies).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import secrets
import socket
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from configs.assembly import build_control_loop
from configs.schema import ClusterConfig
from policies.control.actions import Action, Command, CommandRejected, Force, Pause, Resume, Rollback
from policies.control.loop import ControlLoop
from policies.control.replicas import ClusterMerge, published
from policies.control.snapshot import JobsBacklog, Snapshot
from policies.control.switching_record import shifted
from router.cluster.records import (
    VERSION,
    BadRecord,
    Publication,
    SentCommand,
    StoredState,
    dump,
    parse,
    shape_of,
)
from router.cluster.shared import Leader, SharedState
from router.errors import CommandFailed
from router.logs import event

if TYPE_CHECKING:
    from router.state import RouterState
    from router.telemetry.decisions import DecisionLog

logger = logging.getLogger("modeshift.cluster")
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
STALE_TICKS = 5  # a replica that has not published for this many ticks no longer counts in the gauges
FORGET_TICKS = 300  # ... and is dropped from the shared hash after this many
COMMANDS = {"Force": Force, "Pause": Pause, "Resume": Resume, "Rollback": Rollback}
COMMANDS_WAITING = 16  # operator commands waiting for the leader at once on one replica; more are refused
NOT_CARRIED_OUT = "the leader lost its lease before its state was stored: not carried out"


def default_replica_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class ClusterMember:
    def __init__(
        self,
        config: ClusterConfig,
        *,
        state: Callable[[], RouterState],
        decisions: DecisionLog,
        reload: Callable[[], object],
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        backlogs: Callable[[], Mapping[str, JobsBacklog]] = dict,
    ):
        self.config = config
        self.state_now = state  # the router's state as it is now (a reload replaces it)
        self.decisions = decisions  # the router's decision log: the cluster's decisions go in it
        self.reload = reload  # reload the config file (raises ConfigError, the old config serving on)
        self.backlogs = backlogs  # the jobs waiting with deadlines (one job store for the whole cluster)
        self.clock = clock  # the control clock: monotonic, the one now_s comes from
        self.wall_clock = wall_clock  # for what replicas share only (stored times, publications)
        self.replica = config.replica or default_replica_name()
        self.shared = SharedState(config.redis_url, config.name, timeout_s=config.redis_timeout_s)
        # Operator commands get a client of their own, bounded, so that they cannot take the tick's connections.
        self.commands = SharedState(
            config.redis_url, config.name, timeout_s=config.redis_timeout_s, max_connections=COMMANDS_WAITING + 2
        )
        self._waiting = asyncio.Semaphore(COMMANDS_WAITING)
        self.epoch = 0  # of this replica's leadership; 0: following
        self.incarnation = ""  # of the cluster's history this replica follows or leads
        self.leader: str | None = None
        self.leader_epoch = 0
        self.connected = False
        self.seq = 0  # of the state this replica wrote or applied last
        self.applied: tuple[str, int, int] = ("", 0, 0)  # (incarnation, epoch, seq) of the stored state applied last
        self.decisions_seen: tuple[str, int, int] = ("", 0, 0)  # ... of the leader's last decision in this log
        self.reloads_seen: int | None = None
        self.replicas: list[dict[str, Any]] = []  # for /status: name, age, leader, agrees
        self.bad_records: Counter[str] = Counter()  # kind -> records skipped
        self.disagreement: str | None = None  # why this replica does not follow the leader's state, while it does not
        self._logged: set[tuple[str, str]] = set()  # (kind, what) logged already: each bad record is logged once
        self._loop: ControlLoop | None = None  # the cluster loop, while this replica leads
        self._merge: ClusterMerge | None = None
        self._built_for: object = None  # the config the cluster loop was built for

    @property
    def leading(self) -> bool:
        return self.epoch > 0

    @property
    def shape(self) -> str:
        return shape_of(self.state_now().config)

    def tick_s(self) -> float:
        return self.state_now().config.switching.tick_s

    def to_wall_s(self) -> float:
        """Seconds to add to a control-clock time to make it wall time (and to subtract on the way back)."""
        return self.wall_clock() - self.clock()

    async def tick(self, now_s: float) -> list[Action]:
        """One control tick; the actions this replica took as the leader (none as a follower), in the
        router's decision log already, with the leader, its epoch and the state's seq."""
        state = self.state_now()
        state.before_tick(self.backlogs())
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
            event(
                logger,
                "cluster_unreachable",
                logging.WARNING,
                replica=self.replica,
                error=repr(exc),
                weights="kept as they are",
            )
        self.connected = False
        self._step_down()

    def _step_down(self) -> None:
        if self.leading:
            event(logger, "cluster_step_down", logging.WARNING, replica=self.replica, epoch=self.epoch)
        self.epoch = 0
        self._loop = self._merge = None

    def _bad(self, kind: str, what: str, error: BaseException | str) -> None:
        """A record skipped: counted every time, logged the first time (a bad key would log every tick)."""
        self.bad_records[kind] += 1
        if (kind, what) not in self._logged:
            self._logged.add((kind, what))
            event(
                logger,
                "cluster_bad_record",
                logging.WARNING,
                replica=self.replica,
                kind=kind,
                record=what,
                error=str(error),
                then="skipped; counted in modeshift_cluster_bad_records",
            )

    async def _tick(self, now_s: float) -> list[Action]:
        shared, state = self.shared, self.state_now()
        publication = Publication(
            v=VERSION, at=self.wall_clock(), shape=self.shape, figures=published(state.control.monitor)
        )
        await shared.publish(self.replica, dump(publication))
        await self._follow_reloads()
        lease_ms = int(self.config.lease_ticks * self.tick_s() * 1000)
        if self.leading and not await shared.renew(self.replica, self.epoch, lease_ms):
            self._step_down()
        if not self.leading:
            epoch, incarnation = await shared.acquire(self.replica, lease_ms)
            if epoch:
                await self._take_over(epoch, incarnation, now_s)
        held = await shared.leader()
        self.leader, self.leader_epoch = (held.replica, held.epoch) if held is not None else (None, 0)
        publications = self._parsed(await shared.publications())
        self._list_replicas(publications)
        if not self.leading:
            if held is not None:
                await self._follow(held, now_s)
            return []
        return await self._lead(now_s, publications)

    def _parsed(self, stored: dict[str, bytes]) -> dict[str, Publication]:
        publications = {}
        for replica, raw in stored.items():
            try:
                publications[replica] = parse(Publication, raw)
            except BadRecord as exc:
                self._bad("publication", replica, exc)
        return publications

    def _stored_state(self, raw: bytes | None) -> StoredState | None:
        if raw is None:
            return None
        try:
            return parse(StoredState, raw)
        except BadRecord as exc:
            self._bad("state", "state", exc)
            return None

    async def _take_over(self, epoch: int, incarnation: str, now_s: float) -> None:
        self.epoch, self.incarnation = epoch, incarnation
        self._build_loop(now_s)
        stored = self._stored_state(await self.shared.read_state())
        resumed = False
        if stored is not None and stored.incarnation == incarnation and stored.shape == self.shape:
            assert self._loop is not None
            resumed = self._restore(stored, self._loop.snapshot(now_s))  # the cluster loop's windows
            if resumed:
                self.seq = stored.seq
        if not resumed:
            self.seq = 0
        event(
            logger,
            "cluster_leader",
            logging.INFO,
            replica=self.replica,
            epoch=epoch,
            incarnation=incarnation,
            resumed=resumed,
        )

    def _restore(self, stored: StoredState, snapshot: Snapshot) -> bool:
        """The stored controller state in this replica's controller, its step's evidence counted from `snapshot`;
        False (counted, logged) when it cannot be."""
        try:
            record = shifted(stored.controller, -self.to_wall_s())
            self.state_now().control.controller.restore(record, snapshot)
        except (ValueError, KeyError, TypeError) as exc:
            self._bad("state", f"state of epoch {stored.epoch}", repr(exc))
            return False
        return True

    def _build_loop(self, now_s: float) -> None:
        """The leader's cluster loop: a monitor of the whole cluster's figures, the replica's own policy and
        controller (the data plane draws from that controller's weights)."""
        state = self.state_now()
        fresh = build_control_loop(state.config, now_s=now_s, rng=random.Random(state.config.server.seed))
        self._loop = ControlLoop(fresh.monitor, state.control.policy, state.control.controller, state.control.capacity)
        self._merge = ClusterMerge(fresh.monitor)
        self._built_for = state.config

    async def _lead(self, now_s: float, publications: dict[str, Publication]) -> list[Action]:
        if self._built_for is not self.state_now().config:  # a reload: new lanes, costs or controller
            self._build_loop(now_s)
        loop, merge = self._loop, self._merge
        assert loop is not None and merge is not None
        live, stale = {}, []
        wall, shape = self.wall_clock(), self.shape
        for replica, publication in publications.items():
            age_ticks = (wall - publication.at) / self.tick_s()
            if age_ticks > FORGET_TICKS:
                stale.append(replica)
                merge.forget(replica)
                continue
            if publication.shape != shape:
                continue  # another config's lanes: said in /status (agrees false), never added up
            try:
                merge.absorb(replica, publication.figures, now_s)
            except (ValueError, KeyError, TypeError) as exc:
                self._bad("publication", replica, repr(exc))
                continue
            if age_ticks <= STALE_TICKS:
                live[replica] = publication.figures
        merge.set_gauges(live)
        await self.shared.forget(stale)
        before = loop.controller.record()  # what the controller goes back to if this tick's write is refused
        actions: list[Action] = []
        answers: list[tuple[str, dict[str, Any]]] = []
        for raw in await self.shared.take_commands():
            try:
                sent = parse(SentCommand, raw)
            except BadRecord as exc:
                self._bad("command", "command", exc)
                continue
            if sent.expires_at < wall:  # its sender gave up and said it was not carried out
                answers.append((sent.id, {"error": "the command expired before a leader took it"}))
                continue
            done = self._command(sent, now_s)
            actions += done
            answers.append((sent.id, {"actions": [a.as_record() for a in done]}))
        loop.monitor.backlogs = dict(self.backlogs())  # every replica's runner counts the one shared store
        actions += loop.tick(now_s, self.state_now().ready_replicas(now_s))
        self.seq += 1
        state = StoredState(
            v=VERSION,
            incarnation=self.incarnation,
            epoch=self.epoch,
            seq=self.seq,
            shape=shape,
            controller=shifted(loop.controller.record(), self.to_wall_s()),
            capacity=loop.capacity.record() if loop.capacity is not None else {},
        )
        if not await self.shared.write_state(self.replica, self.epoch, dump(state)):
            # A later leader exists: nothing of this tick counts, here either.
            loop.controller.restore(before, loop.snapshot(now_s))
            for command_id, _ in answers:
                await self.shared.answer_command(command_id, {"error": NOT_CARRIED_OUT}, keep_s=60)
            self._step_down()
            return []
        stamp = {"leader": self.replica, "epoch": self.epoch, "seq": self.seq, "incarnation": self.incarnation}
        records = [{**action.as_record(), **stamp} for action in actions]
        shift = self.to_wall_s()
        await self.shared.add_decisions(
            [_at(record, shift) for record in records], self.state_now().config.telemetry.decisions_kept
        )
        for record in records:  # this replica's log holds the cluster's decisions, as every follower's does
            self.decisions.add(record)
        self.decisions_seen = (self.incarnation, self.epoch, self.seq)
        for command_id, answer in answers:
            await self.shared.answer_command(command_id, answer, keep_s=60)
        self.applied = (self.incarnation, self.epoch, self.seq)
        self.disagreement = None
        return actions

    def _command(self, sent: SentCommand, now_s: float) -> list[Action]:
        kind = COMMANDS.get(sent.kind)
        assert self._loop is not None
        if kind is None:
            return [CommandRejected(at_s=now_s, reason=f"unknown command {sent.kind!r}", command="unknown")]
        try:
            command: Command = kind(**sent.args)
        except TypeError as exc:
            return [CommandRejected(at_s=now_s, reason=f"malformed {sent.kind}: {exc}", command=sent.kind)]
        return self._loop.command(command, now_s)

    async def _follow(self, leader: Leader, now_s: float) -> None:
        if leader.incarnation != self.incarnation:  # a new history (a Redis restarted empty): follow it afresh
            self.incarnation = leader.incarnation
            self.applied = self.decisions_seen = (leader.incarnation, 0, 0)
        stored = self._stored_state(await self.shared.read_state())
        if stored is not None and (stored.incarnation, stored.epoch) == (leader.incarnation, leader.epoch):
            newer = (stored.epoch, stored.seq) > self.applied[1:]
            control = self.state_now().control
            snapshot = control.last_snapshot or control.snapshot(now_s)
            if newer and self._agrees(stored) and self._restore(stored, snapshot):
                self.applied = (stored.incarnation, stored.epoch, stored.seq)
                if control.capacity is not None:  # every replica reports the leader's figure
                    control.capacity.follow(stored.capacity, self.state_now().ready_replicas(now_s))
        kept = self.state_now().config.telemetry.decisions_kept
        shift = -self.to_wall_s()
        for raw in await self.shared.decisions(kept):
            try:
                record = json.loads(raw)
                key = (str(record["incarnation"]), int(record["epoch"]), int(record["seq"]))
            except (ValueError, KeyError, TypeError) as exc:
                self._bad("decision", "decisions", repr(exc))
                continue
            if key[0] == self.decisions_seen[0] and key[1:] > self.decisions_seen[1:]:
                self.decisions.add(_at(record, shift))
                self.decisions_seen = key

    def _agrees(self, stored: StoredState) -> bool:
        """Whether this replica can take the leader's state: same lanes and modes (said once when it cannot)."""
        if stored.shape == self.shape:
            if self.disagreement is not None:
                event(logger, "cluster_agrees", logging.INFO, replica=self.replica, shape=self.shape)
            self.disagreement = None
            return True
        why = (
            f"the leader's state is for other lanes or modes (shape {stored.shape}, this replica's {self.shape}): "
            "weights kept as they are"
        )
        if self.disagreement is None:
            event(logger, "cluster_state_refused", logging.ERROR, replica=self.replica, reason=why)
        self.disagreement = why
        self.bad_records["state_of_another_shape"] += 1
        return False

    async def _follow_reloads(self) -> None:
        reloads = await self.shared.reloads()
        if self.reloads_seen is not None and reloads > self.reloads_seen:
            try:
                self.reload()
            except Exception as exc:  # the old config keeps serving, as for a local reload
                event(logger, "cluster_reload_failed", logging.WARNING, replica=self.replica, error=str(exc))
        self.reloads_seen = reloads

    def _list_replicas(self, publications: dict[str, Publication]) -> None:
        wall, shape = self.wall_clock(), self.shape
        self.replicas = sorted(
            (
                {
                    "replica": name,
                    "last_seen_s": round(wall - p.at, 3),
                    "leader": name == self.leader,
                    "agrees": p.shape == shape,
                }
                for name, p in publications.items()
            ),
            key=lambda r: r["replica"],
        )
        if self.leading:
            for name, p in publications.items():
                if p.shape != shape and ("disagreeing", name) not in self._logged:
                    self._logged.add(("disagreeing", name))
                    event(
                        logger,
                        "cluster_replica_disagrees",
                        logging.ERROR,
                        replica=name,
                        leader=self.replica,
                        reason="its lanes or modes differ: it will not take this leader's weights",
                    )

    async def command(self, command: Command) -> list[dict[str, Any]]:
        """Send a command to the leader, wherever it runs, and wait for what it did (at most 3 ticks).

        CommandFailed, saying truly what became of it: not carried out (no leader took it in time, the
        leader lost its lease first, Redis did not answer, too many commands waiting), or of unknown outcome
        (a leader took it but its answer did not come).
        """
        if self._waiting.locked():
            raise CommandFailed(f"{COMMANDS_WAITING} commands are waiting for the leader already: not carried out")
        async with self._waiting:
            try:
                return await self._send(command)
            except UNREACHABLE as exc:
                raise CommandFailed(
                    f"Redis did not answer ({exc!r}): the command may not have been carried out"
                ) from exc

    async def _send(self, command: Command) -> list[dict[str, Any]]:
        wait_s = 3 * self.tick_s() + 1.0
        command_id = secrets.token_hex(8)
        args = {name: getattr(command, name) for name in command.__dataclass_fields__}
        sent = dump(
            SentCommand(
                v=VERSION, id=command_id, kind=type(command).__name__, args=args, expires_at=self.wall_clock() + wait_s
            )
        )
        await self.commands.send_command(sent)
        try:
            async with asyncio.timeout(wait_s):
                answer = await self._answer(command_id)
        except TimeoutError:
            if await self.commands.withdraw_command(sent):
                raise CommandFailed(
                    "no cluster leader took the command in time; it was withdrawn, not carried out"
                ) from None
            try:  # a leader took it at the last moment: its answer comes with its next write
                async with asyncio.timeout(self.tick_s() + 1.0):
                    answer = await self._answer(command_id)
            except TimeoutError:
                raise CommandFailed(
                    "a leader took the command but did not answer: see /decisions for what it did"
                ) from None
        if "error" in answer:
            raise CommandFailed(str(answer["error"]))
        return list(answer.get("actions", []))

    async def _answer(self, command_id: str) -> dict[str, Any]:
        while (answer := await self.commands.answer(command_id)) is None:
            await asyncio.sleep(min(0.05, self.tick_s() / 4))
        return answer

    async def ask_reload(self) -> None:
        """Every other replica reloads its file at its next tick (this one has reloaded already)."""
        self.reloads_seen = await self.commands.ask_reload()

    def view(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "replica": self.replica,
            "leader": self.leader,
            "leading": self.leading,
            "epoch": self.leader_epoch,
            "incarnation": self.incarnation,
            "connected": self.connected,
            "agrees": self.disagreement is None,
            "disagreement": self.disagreement,
            "bad_records": dict(self.bad_records),
            "replicas": self.replicas,
        }

    async def close(self) -> None:
        if self.leading:
            try:
                await self.shared.release(self.replica, self.epoch)
            except UNREACHABLE:
                pass
        await self.shared.close()
        await self.commands.close()


def _at(record: dict[str, Any], shift_s: float) -> dict[str, Any]:
    """A decision record with its time moved from one clock to the other."""
    at_s = record.get("at_s")
    return {**record, "at_s": at_s + shift_s} if isinstance(at_s, (int, float)) else record
