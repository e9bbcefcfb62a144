"""Chaos: three `modeshift serve` replicas with traffic on all, the leader SIGKILLed in the middle of a transition.

Real processes, a real redis-server, the wall clock. The policy asks for
the batch mode from the start, so a gradual transition begins at once and
moves a step a second as the traffic gives evidence; when it is past its
first step, the leader is killed. Within two lease periods another replica
leads, carries the same transition on from the stored state, and every
replica ends on the batch mode's weights, with one transition started and
one completed in the cluster's decision log.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import aiohttp
import yaml

from tests.router.helpers import TOKEN, two_lane_raw
from tests.router.test_serve_process import free_port, next_event

TICK_S, LEASE_TICKS = 0.2, 2
STARTED: list[Replica] = []  # every replica process a test started


class Replica:
    def __init__(self, name: str, redis_url: str, realtime: str, batch: str, tmp_path, **overrides):
        self.name = name
        self.port, self.admin_port = free_port(), free_port()
        raw = two_lane_raw(
            [realtime],
            [batch],
            server={"listen": f"127.0.0.1:{self.port}", "admin_listen": f"127.0.0.1:{self.admin_port}"},
            cluster={"redis_url": redis_url, "name": "chaos", "replica": name, "lease_ticks": LEASE_TICKS},
            switching={
                "hold": "0s",
                "cooldown": "10m",
                "step": "1s",
                "min_samples": 5,
                "steps": [0.25, 0.5, 0.75, 1.0],
                "tick": f"{int(TICK_S * 1000)}ms",
            },
            policy={"type": "static", "params": {"mode": "batch"}},
            **overrides,
        )
        self.config = tmp_path / f"{name}.yaml"
        self.config.write_text(yaml.safe_dump(raw))
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "commands.cli",
            "serve",
            "-c",
            str(self.config),
            stderr=asyncio.subprocess.PIPE,
            env={"MODESHIFT_TEST_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"},
        )
        STARTED.append(self)  # killed after the test whatever happens (tests/router/cluster/conftest.py)
        await next_event(self.process.stderr, "listening")
        asyncio.ensure_future(self.process.stderr.read())

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def status(self, client: aiohttp.ClientSession) -> dict:
        async with client.get(f"{self.admin}/status", headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            return await response.json()

    async def decisions(self, client: aiohttp.ClientSession) -> list[dict]:
        async with client.get(f"{self.admin}/decisions", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            return [json.loads(line) for line in (await r.text()).splitlines()]


async def test_killing_the_leader_mid_transition_hands_it_to_a_new_leader_that_finishes_it_once(
    redis_server, upstream, tmp_path
):
    realtime, batch = await upstream(), await upstream()
    replicas = [Replica(f"r{i}", redis_server.url, realtime.url, batch.url, tmp_path) for i in range(3)]
    for replica in replicas:
        await replica.start()
    stop = asyncio.Event()

    async def traffic(client: aiohttp.ClientSession, replica: Replica) -> None:
        while not stop.is_set():
            try:
                async with client.get(f"{replica.url}/work") as response:
                    await response.read()
            except aiohttp.ClientError:
                return  # this replica was killed
            await asyncio.sleep(0.01)

    async with aiohttp.ClientSession() as client:
        senders = [asyncio.ensure_future(traffic(client, replica)) for replica in replicas]
        try:
            async with asyncio.timeout(30):
                while True:  # the transition is under way and past its first step
                    view = await replicas[0].status(client)
                    if view["transition"] is not None and view["transition"]["step"] >= 2:
                        break
                    await asyncio.sleep(0.05)
            leader = next(r for r in replicas if r.name == view["cluster"]["leader"])
            await leader.kill()
            killed_at = asyncio.get_running_loop().time()
            survivors = [r for r in replicas if r is not leader]
            async with asyncio.timeout(10):
                while True:
                    views = [await r.status(client) for r in survivors]
                    if any(v["cluster"]["leading"] for v in views):
                        took_over_s = asyncio.get_running_loop().time() - killed_at
                        break
                    await asyncio.sleep(0.02)
            async with asyncio.timeout(30):
                while True:
                    views = [await r.status(client) for r in survivors]
                    if all(v["mode"] == "batch" for v in views):
                        break
                    await asyncio.sleep(0.1)
        finally:
            stop.set()
            await asyncio.gather(*senders, return_exceptions=True)
        decisions = await survivors[0].decisions(client)
        for replica in survivors:
            await replica.kill()
    lease_s = TICK_S * LEASE_TICKS
    # The lease runs out at most one lease after the last renewal; the next tick of a survivor takes it.
    assert took_over_s < 2 * lease_s + TICK_S + 0.3, took_over_s
    assert [v["weights"] for v in views] == [{"batch": 1.0, "realtime": 0.0}] * 2
    kinds = [d["kind"] for d in decisions]
    assert kinds.count("TransitionStarted") == 1 and kinds.count("TransitionCompleted") == 1, kinds
    assert "RolledBack" not in kinds
    leaders = [d["leader"] for d in decisions if d["kind"] in ("TransitionStarted", "TransitionCompleted")]
    assert leaders[0] == leader.name and leaders[1] != leader.name  # started by one leader, finished by the next
