"""The provider lane's part of bench/jobs.py: chat jobs through the Batch API bridge against sync calls.

`modeshift serve` runs as its own process with a realtime lane and a
`batch_api` lane, both in front of the loopback stand-in of OpenAI's API
(tests/standins/provider.py, run in this process); the figures are in
bench/jobs.py's docstring.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.standins.provider import ProviderStandIn  # noqa: E402

PRICES = {"per_1k_input_tokens": 0.0025, "per_1k_output_tokens": 0.0100}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(provider_url: str, work: Path, data_port: int, admin_port: int) -> dict:
    return {
        "server": {"listen": f"127.0.0.1:{data_port}", "admin_listen": f"127.0.0.1:{admin_port}"},
        "lanes": {
            "realtime": {"upstreams": [provider_url], "max_in_flight": 256, "cost": PRICES},
            "batch": {
                "upstreams": [provider_url],
                "batch_api": {"api": "openai", "max_requests": 5000, "max_wait": "1s", "poll": "200ms"},
                "cost": {**PRICES, "discount": 0.5},
            },
        },
        "routes": [{"path": "/v1/chat/completions", "protocol": "openai-chat"}],
        "modes": {"realtime": {"realtime": 1.0}},
        "initial_mode": "realtime",
        "policy": {"type": "static", "params": {"mode": "realtime"}},
        "jobs": {"lane": "batch", "database": str(work / "jobs.sqlite3")},
    }


async def _serve(config: Path, token: str, data_url: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "commands.cli",
        "serve",
        "-c",
        str(config),
        env={**os.environ, "MODESHIFT_ADMIN_TOKEN": token},
        stderr=asyncio.subprocess.DEVNULL,
        cwd=ROOT,
    )
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            try:
                async with session.get(f"{data_url}/v1/jobs/none"):
                    return process
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
    raise RuntimeError("the router did not start")


def _chat(i: int) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"summarise document {i}"}]}


async def _limited(n: int, limit: int, make) -> list:
    gate = asyncio.Semaphore(limit)

    async def one(i: int):
        async with gate:
            return await make(i)

    return await asyncio.gather(*(one(i) for i in range(n)))


async def measure_provider(n: int) -> list[str]:
    stand_in = ProviderStandIn()
    await stand_in.start()
    token = secrets.token_hex(16)
    data_port, admin_port = _free_port(), _free_port()
    data_url, admin_url = f"http://127.0.0.1:{data_port}", f"http://127.0.0.1:{admin_port}"
    key = {"Authorization": "Bearer sk-bench-0000"}
    with tempfile.TemporaryDirectory(prefix="modeshift-bench-provider-") as work:
        config = Path(work) / "modeshift.yaml"
        config.write_text(yaml.safe_dump(_config(stand_in.url, Path(work), data_port, admin_port)))
        router = await _serve(config, token, data_url)
        try:
            async with aiohttp.ClientSession() as session:

                async def lane_cost(lane: str) -> float:
                    headers = {"Authorization": f"Bearer {token}"}
                    async with session.get(f"{admin_url}/status", headers=headers) as response:
                        return (await response.json())["lanes"][lane]["since_start"]["cost_usd"]

                async def submit(i: int) -> str:
                    headers = {**key, "Prefer": "respond-async"}
                    async with session.post(f"{data_url}/v1/chat/completions", json=_chat(i), headers=headers) as r:
                        assert r.status == 202, await r.text()
                        return r.headers["Location"]

                async def answered(location: str) -> None:
                    while True:
                        async with session.get(f"{data_url}{location}", headers=key) as r:
                            job = await r.json()
                        if job["status"] == "succeeded":
                            return
                        if job["status"] in ("failed", "cancelled"):
                            raise RuntimeError(f"{location}: {job['status']}: {job['error']}")
                        await asyncio.sleep(0.2)

                async def sync(i: int) -> None:
                    async with session.post(f"{data_url}/v1/chat/completions", json=_chat(i), headers=key) as r:
                        assert r.status == 200, await r.text()
                        await r.read()

                started = time.perf_counter()
                locations = await _limited(n, 64, submit)
                accepted_s = time.perf_counter() - started
                await _limited(n, 16, lambda i: answered(locations[i]))
                done_s = time.perf_counter() - started
                batch_cost = await lane_cost("batch")
                started = time.perf_counter()
                await _limited(n, 64, sync)
                sync_s = time.perf_counter() - started
                sync_cost = await lane_cost("realtime")
        finally:
            router.terminate()
            await router.wait()
            await stand_in.stop()
    per_1k = 1000 / n
    return [
        f"provider lane ({n:,} chat jobs, the loopback stand-in of OpenAI's API answering at once):",
        f"  jobs accepted: {n / accepted_s:,.0f} jobs/s; answered through the Batch API bridge:"
        f" {n / done_s:,.0f} jobs/s ({len(stand_in.created)} batch files, {len(stand_in.uploads)} uploads)",
        f"  sync chat calls on the realtime lane: {n / sync_s:,.0f} requests/s",
        f"  cost per 1k requests booked by the router: batch ${batch_cost * per_1k:.4f}, realtime"
        f" ${sync_cost * per_1k:.4f} (batch costs {batch_cost / sync_cost:.0%})",
    ]
