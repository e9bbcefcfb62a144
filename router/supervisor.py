"""`modeshift serve --workers N`: N router processes on one host, one listening socket, one supervisor.

Each worker is `modeshift serve -c FILE --worker`: a whole router that
binds the data and admin addresses with SO_REUSEPORT, so the kernel spreads
new connections over the workers. The workers form one cluster through the
config's `cluster:` section (Redis; router.cluster), which is required: N
workers with N controllers would switch on their own (split brain).

The supervisor starts the workers and then only watches:
- a worker that exits by itself is started again, after a pause that
  doubles while workers keep dying young (1 s, up to 30 s) and resets once
  one has run for a minute;
- SIGTERM and SIGINT go to every worker, which drain and stop; the
  supervisor exits once all have (0 when each stopped cleanly);
- SIGHUP goes to every worker: each reloads its config file.

A worker whose supervisor is gone (killed outright) drains and stops by
itself within a second (router.server), so no orphan keeps the port.

It serves nothing itself and imports no aiohttp server code.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import time
from pathlib import Path

from configs import ConfigError, load_config
from router import logs
from router.logs import event

logger = logging.getLogger("modeshift.supervisor")
FIRST_PAUSE_S, LONGEST_PAUSE_S = 1.0, 30.0
HEALTHY_AFTER_S = 60.0  # a worker that ran this long resets the restart pause


def check_workers(path: str | Path, workers: int) -> list[str]:
    """Why `workers` processes cannot serve the config at `path`, one line each (empty: they can)."""
    if workers < 1:
        return [f"--workers must be at least 1, got {workers}"]
    try:
        config = load_config(path)
    except ConfigError as exc:
        return exc.lines
    problems = []
    if workers > 1 and config.cluster is None:
        problems.append(
            f"{path}: --workers {workers} needs a `cluster:` section (redis_url), so that the workers share one "
            "controller instead of switching each on its own"
        )
    if workers > 1 and not hasattr(socket, "SO_REUSEPORT"):
        problems.append(f"--workers {workers}: this system has no SO_REUSEPORT to share the listening socket")
    return problems


class Supervisor:
    def __init__(self, path: str | Path, workers: int):
        self.path = str(path)
        self.workers = workers
        self.children: dict[int, asyncio.subprocess.Process] = {}  # slot -> its worker
        self.stopping = False

    async def _start(self, slot: int) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "commands.cli", "serve", "-c", self.path, "--worker"
        )
        self.children[slot] = process
        event(logger, "worker_started", slot=slot, pid=process.pid)
        return process

    async def _keep(self, slot: int) -> int:
        """Run the worker of `slot` until the supervisor stops; its last exit status."""
        pause = FIRST_PAUSE_S
        while True:
            started = time.monotonic()
            process = await self._start(slot)
            status = await process.wait()
            if self.stopping:
                return status
            ran_s = time.monotonic() - started
            pause = FIRST_PAUSE_S if ran_s >= HEALTHY_AFTER_S else pause
            event(
                logger,
                "worker_exited",
                logging.WARNING,
                slot=slot,
                pid=process.pid,
                status=status,
                ran_s=round(ran_s, 1),
                restart_in_s=pause,
            )
            await asyncio.sleep(pause)
            if self.stopping:
                return status
            pause = min(pause * 2, LONGEST_PAUSE_S)

    def _forward(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
        for process in self.children.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self._forward, signum)
        event(logger, "supervising", workers=self.workers, config=self.path)
        statuses = await asyncio.gather(*(self._keep(slot) for slot in range(self.workers)))
        event(logger, "supervisor_stopped", statuses=list(statuses))
        return 0 if all(status == 0 for status in statuses) else 1


def supervise(path: str | Path, workers: int) -> int:
    """Run `workers` router processes for the config at `path`; exit status 0, 1 (a worker failed) or 2."""
    problems = check_workers(path, workers)
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        return 2
    logs.configure(load_config(path).telemetry.log_level)
    return asyncio.run(Supervisor(path, workers).run())
