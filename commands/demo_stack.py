"""The demo's local stack: two reference backends and the router, as child processes.

`LocalStack(config_path)` copies the config with free loopback ports in place
of its addresses (so nothing on this machine collides with it), starts
`modeshift backend --mode realtime` and `--mode batch` for the `realtime` and
`batch` lanes and `modeshift serve` with a fresh admin token, and waits until
each listens. Each child runs in its own session with its output in a log
file; `stop()` (or leaving the context, normally, on an error or on Ctrl-C)
stops them all: SIGTERM, then SIGKILL after a grace period. The logs stay
until `cleanup()`, so the router's decision lines can be read after it stopped.

What must not live here: the traffic (commands.replay), the report (commands.demo).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

STARTUP_S = 180.0  # a cold start loads torch and the model from disk
GRACE_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class StackFailed(RuntimeError):
    pass


class LocalStack:
    def __init__(self, config_path: Path):
        self.config_path = config_path
        self.token = secrets.token_hex(16)
        self._dir = tempfile.TemporaryDirectory(prefix="modeshift-demo-")
        self.dir = Path(self._dir.name)
        self._children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.data_url = self.admin_url = ""
        self.upstreams: dict[str, str] = {}  # lane -> its backend's base URL, once started
        self.router_log = self.dir / "router.log"

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.cleanup()

    def start(self) -> None:
        """Start the three processes and wait until each listens; on failure, stop what started."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        raw = yaml.safe_load(self.config_path.read_text())
        data_port, admin_port = free_port(), free_port()
        raw["server"]["listen"] = f"127.0.0.1:{data_port}"
        raw["server"]["admin_listen"] = f"127.0.0.1:{admin_port}"
        waits = []
        for lane in ("realtime", "batch"):
            port = free_port()
            self.upstreams[lane] = f"http://127.0.0.1:{port}"
            raw["lanes"][lane]["upstreams"] = [self.upstreams[lane]]
            # One CPU thread each: the two lanes stand for two machines, and
            # must not fight over the same cores.
            args = ["backend", "--mode", lane, "--port", str(port), "--threads", "1"]
            self._spawn(f"{lane} backend", args, self.dir / f"{lane}.log")
            waits.append((f"{lane} backend", port))
        config = self.dir / "modeshift.yaml"
        config.write_text(yaml.safe_dump(raw, sort_keys=False))
        env = {**os.environ, raw["server"].get("admin_token_env", "MODESHIFT_ADMIN_TOKEN"): self.token}
        self._spawn("router", ["serve", "-c", str(config)], self.router_log, env=env)
        waits.append(("router", data_port))
        for name, port in waits:
            self._wait(name, port)
        self.data_url = f"http://127.0.0.1:{data_port}"
        self.admin_url = f"http://127.0.0.1:{admin_port}"

    def _spawn(self, name: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        with open(log, "wb") as out:
            child = subprocess.Popen(
                [sys.executable, "-m", "commands.cli", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the demo, which stops them in order
                env=env,
            )
        self._children.append((name, child))

    def _wait(self, name: str, port: int) -> None:
        deadline = time.monotonic() + STARTUP_S
        child = next(c for n, c in self._children if n == name)
        while time.monotonic() < deadline:
            if child.poll() is not None:
                log = self.dir / ("router.log" if name == "router" else f"{name.split()[0]}.log")
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise StackFailed(f"the {name} exited with status {child.returncode}:\n{tail}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)
        raise StackFailed(f"the {name} did not listen on port {port} within {STARTUP_S:g} s")

    async def status(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        status: dict[str, Any] = json.loads(await self.admin_get(session, "/status"))
        return status

    async def admin_get(self, session: aiohttp.ClientSession, path: str) -> bytes:
        """GET an admin endpoint (`/status`, `/metrics`, `/decisions`) with the stack's token."""
        headers = {"Authorization": f"Bearer {self.token}"}
        async with session.get(f"{self.admin_url}{path}", headers=headers) as response:
            response.raise_for_status()
            return await response.read()

    def stop(self) -> None:
        """Stop every child: the router first (it drains), then the backends."""
        for _, child in reversed(self._children):
            if child.poll() is None:
                try:
                    os.killpg(child.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for _, child in reversed(self._children):
            try:
                child.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        self._children.clear()

    def cleanup(self) -> None:
        self._dir.cleanup()
