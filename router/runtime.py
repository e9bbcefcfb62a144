"""The running router: the current state, the control tick, commands and reloads.

`Runtime` owns the one mutable reference the data plane reads,
`runtime.state`, and replaces it whole on a reload. The control task ticks
the control loop every `switching.tick` on the monotonic clock; each action
it returns goes to the decision log. SetWeights needs no other effect: the
data plane draws from the controller's weights on every request.

The clock is injected (`clock()` returns seconds), so tests can drive ticks
with a fake one; nothing else in the router reads time for control purposes.
It is monotonic, in a cluster too: latencies, durations and the control
clock never see a step of the system's wall clock. The wall clock (also
injected) is only for what the replicas of a cluster share.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from configs import ConfigError, load_config
from configs.schema import ModeshiftConfig
from policies.control.actions import Action, Command
from policies.control.objectives import JOBS
from policies.control.snapshot import JobsBacklog
from router.discovery import DnsDiscovery
from router.jobs.api import Jobs

if TYPE_CHECKING:
    from router.cluster.coordinator import ClusterMember
from router.logs import event
from router.state import build_state, carry_over
from router.telemetry.decisions import DecisionLog
from router.telemetry.figures import Family, collect
from router.telemetry.history import History
from router.telemetry.reporter import Telemetry
from router.telemetry.route_stats import RouteStats

logger = logging.getLogger("modeshift.router")


class Runtime:
    def __init__(
        self,
        config: ModeshiftConfig,
        *,
        config_path: str | Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        telemetry: Telemetry,
    ):
        self.clock = clock
        self.config_path = config_path
        self.state = build_state(config, now_s=clock(), clock=clock)
        self.decisions = DecisionLog(config.telemetry.decisions_kept)
        self.route_stats = RouteStats()  # survives reloads, like the decision log
        self.history = History()
        self.jobs = (
            Jobs(
                config,
                lambda: self.state.lanes,
                lambda path: self.state.routes.find(path),
                clock=wall_clock,  # jobs' times are stored and shared: wall time, a test's when it gives one
                record=self.record_line,
            )
            if config.jobs.enabled
            else None
        )
        self.telemetry = telemetry  # built by the server (router.server.runtime_for), which starts it
        self.cluster: ClusterMember | None = None
        if config.cluster is not None:
            # Imported here: redis-py is the `cluster` extra, and a lone router needs none of it.
            from router.cluster.coordinator import ClusterMember

            self.cluster = ClusterMember(
                config.cluster,
                state=lambda: self.state,
                decisions=self.decisions,
                reload=self.reload,
                clock=clock,
                wall_clock=wall_clock,
                backlogs=self.backlogs,
            )
        self.discovery = DnsDiscovery(lambda: self.state)  # lanes with `discovery:` (router.discovery)
        self.started_s = clock()
        self.reloads = 0
        self._ticker: asyncio.Task[Any] | None = None
        self._closing: set[asyncio.Task[Any]] = set()

    def now_s(self) -> float:
        return self.clock()

    def record_line(self, lane: str, latency_s: float, ok: bool, input_tokens: int, output_tokens: int) -> None:
        """One job line a provider batch answered, on its lane's window and in the jobs class's objective."""
        state = self.state
        if lane not in state.lanes:  # gone in a reload
            return
        now = self.now_s()
        monitor = state.control.monitor
        cost_usd = monitor.attributed_cost_usd(lane, input_tokens, output_tokens)
        window = state.lanes[lane].window
        window.arrived(now, True)
        window.completed(
            now, latency_s, ok=ok, cost_usd=cost_usd, input_tokens=input_tokens, output_tokens=output_tokens
        )
        monitor.served(now, JOBS, lane, latency_s, ok)

    def backlogs(self) -> dict[str, JobsBacklog]:
        """The jobs waiting with deadlines, by the lane that runs them (router.jobs)."""
        return self.jobs.backlogs() if self.jobs is not None else {}

    def figures(self) -> list[Family]:
        """The router's metric families now, for every exporter (router.telemetry.figures)."""
        bridge = self.jobs.bridge if self.jobs is not None else None
        counts = bridge.counts if bridge is not None else None
        cluster = self.cluster.view() if self.cluster is not None else None
        return collect(self.state, self.route_stats, self.decisions, self.now_s(), counts, cluster)

    def tick(self, now_s: float | None = None) -> list[Action]:
        """One control tick at `now_s` (default: the clock's reading now)."""
        now = self.now_s() if now_s is None else now_s
        state = self.state
        state.before_tick(self.backlogs())
        actions = state.control.tick(now, state.ready_replicas(now))
        self.decisions.record(actions)
        self.history.record(now, state.lanes, state.control.weights.as_dict())
        return actions

    def command(self, command: Command) -> list[Action]:
        actions = self.state.control.command(command, self.now_s())
        self.decisions.record(actions)
        return actions

    async def run_command(self, command: Command) -> list[dict[str, Any]]:
        """The command carried out, by this router or, in a cluster, by the leader; the records of its actions.

        CommandFailed: in a cluster, what became of a command no leader carried out, or whose answer was lost.
        """
        if self.cluster is None:
            return [action.as_record() for action in self.command(command)]
        return await self.cluster.command(command)

    async def tick_async(self, now_s: float | None = None) -> list[Action]:
        """One control tick: the lone router's, or this replica's part of the cluster's."""
        if self.cluster is None:
            return self.tick(now_s)
        now = self.now_s() if now_s is None else now_s
        actions = await self.cluster.tick(now)  # logged by the cluster member, with the leader's epoch
        self.history.record(now, self.state.lanes, self.state.control.weights.as_dict())
        return actions

    async def reload_everywhere(self) -> dict[str, Any]:
        """Reload here; in a cluster, then have every other replica reload its own file."""
        record = self.reload()
        if self.cluster is not None:
            await self.cluster.ask_reload()
        return record

    def reload(self, config: ModeshiftConfig | None = None) -> dict[str, Any]:
        """Swap in `config` (default: the config file read again); ConfigError keeps the old one."""
        if config is None:
            if self.config_path is None:
                raise RuntimeError("this router was started without a config file to reload")
            config = load_config(self.config_path)
        old = self.state
        now = self.now_s()
        try:
            state, carried = carry_over(old, config, now_s=now, clock=self.clock)
        except Exception as exc:  # valid on paper, but could not be built: the old config keeps serving
            where = self.config_path or "(in memory)"
            raise ConfigError([f"{where}: the new config could not be applied: {exc}"]) from exc
        self.state = state
        self.reloads += 1
        self.decisions.resize(config.telemetry.decisions_kept)
        self.telemetry.configure(config.telemetry)
        for lane in carried.replaced_lanes:
            task = asyncio.get_running_loop().create_task(lane.close_when_idle(config.server.shutdown_timeout_s))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        record = {
            "kind": "Reloaded",
            "at_s": now,
            "reason": f"config {self.config_path or '(in memory)'} reloaded",
            "kept_lanes": list(carried.kept_lanes),
            "replaced_lanes": [lane.name for lane in carried.replaced_lanes],
            "kept_control": carried.kept_control,
            "mode": carried.mode,
            "abandoned_transition": carried.abandoned_transition,
        }
        if _listeners(config) != _listeners(old.config):
            event(logger, "restart_needed", logging.WARNING, reason="listen addresses change only on restart")
        self.decisions.add(record)
        return record

    def start(self) -> None:
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    async def _tick_forever(self) -> None:
        due_s = self.now_s()
        while True:
            tick_s = self.state.config.switching.tick_s
            due_s += tick_s
            await asyncio.sleep(max(due_s - self.now_s(), 0.0))
            # The tick is stamped when it was due, not when the timer woke (a
            # few ms off, by how busy the loop was and uvloop's millisecond
            # timers): else a 5 s step read 4.999 s at its fifth tick and
            # lasted six, by chance. A stall of over half a tick is not
            # hidden: the schedule starts again from it.
            if abs(self.now_s() - due_s) > tick_s / 2:
                due_s = self.now_s()
            try:
                await self.tick_async(due_s)
            except Exception:
                # A bug in a policy must not stop the router: the weights stay
                # where they are, and the error is in the log.
                logger.exception("control tick failed; weights unchanged")

    async def close(self) -> None:
        if self._ticker is not None:
            # Cancelled until it is done: a library may turn one cancellation into an error it handles
            # (redis-py does, in the middle of a command), and the ticker must not outlive the router.
            while not self._ticker.done():
                self._ticker.cancel()
                await asyncio.wait([self._ticker], timeout=0.5)
        await self.discovery.close()
        if self.cluster is not None:
            await self.cluster.close()
        for lane in self.state.lanes.values():
            await lane.close()
        await asyncio.gather(*self._closing, return_exceptions=True)
        await self.telemetry.close()


def _listeners(config: ModeshiftConfig) -> tuple[str, str]:
    return config.server.listen, config.server.admin_listen
