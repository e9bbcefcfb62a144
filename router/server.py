"""`modeshift serve`: the data plane and the admin API, until SIGTERM.

Signals: SIGHUP reloads the config file (an invalid file is refused, logged
with its error lines, and the old config keeps serving); SIGTERM or SIGINT
stops accepting connections, lets in-flight requests finish within
`server.shutdown_timeout`, and returns 0.

uvloop drives the event loop when it is installed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from configs import ConfigError, load_config
from configs.schema import ModeshiftConfig, split_host_port
from router import logs
from router.admin.api import admin_app
from router.dataplane import DataPlaneServer
from router.logs import event
from router.proxy import Proxy
from router.runtime import Runtime
from router.telemetry.reporter import Telemetry, TelemetryUnavailable

logger = logging.getLogger("modeshift.server")

# Connections waiting to be accepted: well above the default 128, as a burst
# of clients should queue in the kernel rather than be refused.
LISTEN_BACKLOG = 2048


def runtime_for(
    config: ModeshiftConfig,
    *,
    config_path: str | Path | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
) -> Runtime:
    """The router's state and its telemetry, built from `config` (TelemetryUnavailable: OTLP asked, not installed).

    `clock` measures and drives control (monotonic); `wall_clock` stamps what is stored or shared: jobs, their
    leases and deadlines (router.jobs), and what the replicas of a cluster share (router.cluster.coordinator).
    """
    telemetry = Telemetry.build(config.telemetry)
    return Runtime(config, config_path=config_path, clock=clock, wall_clock=wall_clock, telemetry=telemetry)


class RunningRouter:
    """The router's listeners, started and stopped together (also used by tests)."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        config = runtime.state.config.server
        self.proxy = Proxy(runtime)
        self._data = web.ServerRunner(DataPlaneServer(self.proxy, config), shutdown_timeout=config.shutdown_timeout_s)
        self._admin = web.AppRunner(admin_app(runtime), access_log=None, shutdown_timeout=5.0)
        self.data_address: tuple[str, int] | None = None
        self.admin_address: tuple[str, int] | None = None

    async def start(
        self,
        *,
        data: tuple[str, int] | None = None,
        admin: tuple[str, int] | None = None,
        ticking: bool = True,
        shared_socket: bool = False,
    ) -> None:
        """Listen on the config's addresses, or the given ones (port 0: any free port).

        With `ticking=False` the control loop only moves when `runtime.tick()`
        is called (tests drive it with a fake clock). `shared_socket`: bind with
        SO_REUSEPORT, as one of `serve --workers N`'s processes (router.supervisor).
        """
        config = self.runtime.state.config.server
        data = data or split_host_port(config.listen)
        admin = admin or split_host_port(config.admin_listen)
        await self._data.setup()
        await self._admin.setup()
        reuse_port = True if shared_socket else None
        data_site = web.TCPSite(self._data, *data, backlog=LISTEN_BACKLOG, reuse_address=True, reuse_port=reuse_port)
        admin_site = web.TCPSite(self._admin, *admin, reuse_address=True, reuse_port=reuse_port)
        await data_site.start()
        await admin_site.start()
        self.data_address = self._data.addresses[0][:2]
        self.admin_address = self._admin.addresses[0][:2]
        self.runtime.telemetry.start(self.runtime.figures)
        self.runtime.discovery.start()
        if self.runtime.jobs is not None:
            await self.runtime.jobs.start(self.proxy.run_job)
        if ticking:
            self.runtime.start()

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests (within shutdown_timeout), close upstream clients.

        Running jobs go back to the queue first: they run again at the next start.
        """
        if self.runtime.jobs is not None:
            await self.runtime.jobs.close()
        await self._data.cleanup()
        await self._admin.cleanup()
        await self.runtime.close()


async def _serve(config: ModeshiftConfig, path: Path, shared_socket: bool) -> int:
    try:
        runtime = runtime_for(config, config_path=path)
    except TelemetryUnavailable as exc:
        print(exc, file=sys.stderr)
        return 2
    router = RunningRouter(runtime)
    try:
        await router.start(shared_socket=shared_socket)
    except OSError as exc:  # the address is taken, or not this host's
        print(f"{path}: cannot listen on {config.server.listen} / {config.server.admin_listen}: {exc}", file=sys.stderr)
        await router.stop()
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def reload() -> None:
        try:
            runtime.reload()
        except ConfigError as exc:  # the file, its validation, or building it: the old config keeps serving
            event(logger, "reload_refused", logging.ERROR, config=str(path), errors=exc.lines)

    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    watchdog = loop.create_task(_stop_when_orphaned(stop)) if shared_socket else None
    # Logged once the signal handlers are in place: a supervisor that sends
    # SIGHUP as soon as it reads this line must not kill the process.
    assert router.data_address is not None and router.admin_address is not None  # both listen once started
    event(
        logger,
        "listening",
        data=f"http://{router.data_address[0]}:{router.data_address[1]}",
        admin=f"http://{router.admin_address[0]}:{router.admin_address[1]}",
        config=str(path),
        mode=runtime.state.control.controller.mode,
    )
    token_variable = runtime.state.config.server.admin_token_env
    if not os.environ.get(token_variable):
        event(logger, "admin_api_off", logging.WARNING, reason=f"set the environment variable {token_variable}")
    await stop.wait()
    if watchdog is not None:
        watchdog.cancel()
    event(logger, "stopping", in_flight=sum(lane.gate.in_flight for lane in runtime.state.lanes.values()))
    await router.stop()
    event(logger, "stopped")
    return 0


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    """A worker of `serve --workers N` stops (draining) when its supervisor is gone, even killed with SIGKILL:
    nobody would stop or restart it any more, and it would hold the port."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    event(logger, "supervisor_gone", logging.WARNING, supervisor=parent)
    stop.set()


def serve(path: str | Path, *, shared_socket: bool = False) -> int:
    """Run the router for the config at `path`; exit status 0, or 2 for an invalid config."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return 2
    logs.configure(config.telemetry.log_level)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_serve(config, Path(path), shared_socket))
    return uvloop.run(_serve(config, Path(path), shared_socket))
