"""A router SIGKILLed while its jobs are at the provider resumes them from the store and sends nothing twice.

`modeshift serve` runs as a real process in front of the provider stand-in
(tests/standins/provider.py); it is killed at two points of a batch's life:
while the provider works on it (mid-poll), and after the file was uploaded
but before the batch could be created. Either way, after the restart every
job ends with the provider's answer, one file was uploaded and one batch made.
The provider clients' own crash recovery (finding a file by its name, a
batch by its metadata) is checked against the stand-in directly.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import aiohttp
import yaml

from router.jobs.provider.openai import OpenAIBatchApi
from router.jobs.provider.wire import Line
from tests.router.jobs.test_provider_lanes import ALICE, chat, one_file, outcome, provider_raw, submit
from tests.router.test_serve_process import free_port, next_event


class Served:
    """`modeshift serve` on a config file, started and SIGKILLed at will."""

    def __init__(self, raw: dict, tmp_path):
        self.port = free_port()
        addresses = {"listen": f"127.0.0.1:{self.port}", "admin_listen": f"127.0.0.1:{free_port()}"}
        raw["server"] = {**raw["server"], **addresses}
        self.config = tmp_path / "modeshift.yaml"
        self.config.write_text(yaml.safe_dump(raw))
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "commands.cli", "serve", "-c", str(self.config), stderr=asyncio.subprocess.PIPE
        )
        await next_event(self.process.stderr, "listening")
        asyncio.ensure_future(self.process.stderr.read())  # keep draining

    async def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            await self.kill()


async def until(condition, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)


async def test_a_router_killed_mid_poll_resumes_polling_and_uploads_nothing_twice(
    upstream, provider, client, tmp_path, job_database
):
    realtime = await upstream()
    provider.hold = True
    served = Served(provider_raw(realtime.url, provider.url, job_database, **one_file(20)), tmp_path)
    try:
        await served.start()
        locations = [await submit(client, served, chat(i)) for i in range(20)]
        await until(lambda: provider.created and provider.batches[provider.created[0]].reads >= 3)
        await served.kill()
        provider.hold = False
        await served.start()
        jobs = [await outcome(client, served, location) for location in locations]
    finally:
        await served.stop()
    assert [job["status"] for job in jobs] == ["succeeded"] * 20
    assert [job["response"]["body"]["choices"][0]["message"]["content"] for job in jobs] == [
        f"echo: hello {i}" for i in range(20)
    ]
    assert len(provider.uploads) == 1 and len(provider.created) == 1 and not realtime.seen


async def test_a_router_killed_between_upload_and_batch_creation_creates_from_the_file_it_uploaded(
    upstream, provider, client, tmp_path, job_database
):
    realtime = await upstream()
    provider.failing_creates = 10**6
    served = Served(provider_raw(realtime.url, provider.url, job_database, **one_file(5)), tmp_path)
    try:
        await served.start()
        locations = [await submit(client, served, chat(i)) for i in range(5)]
        await until(lambda: provider.uploads and provider.failing_creates < 10**6)
        await served.kill()
        provider.failing_creates = 0
        await served.start()
        jobs = [await outcome(client, served, location) for location in locations]
    finally:
        await served.stop()
    assert [job["status"] for job in jobs] == ["succeeded"] * 5
    assert len(provider.uploads) == 1 and len(provider.created) == 1


async def test_the_openai_client_finds_the_file_and_the_batch_it_made_before_a_crash(provider):
    headers = [("Authorization", "Bearer sk-alice-1234")]
    async with aiohttp.ClientSession() as session:
        api = OpenAIBatchApi(session, provider.url, "24h")
        content = api.encode(Line("job_1", "/v1/chat/completions", json.loads(chat(1))))
        file_id = await api.stage("pb_1", content, headers, None)
        assert await api.stage("pb_1", content, headers, None) == file_id  # found by its name: not uploaded again
        assert await api.stage("pb_2", content, headers, None) != file_id
        assert await api.find("pb_1", headers) is None
        remote = await api.create("pb_1", "/v1/chat/completions", content, file_id, headers)
        assert await api.find("pb_1", headers) == remote
        assert await api.find("pb_1", [("Authorization", "Bearer sk-bob-5678")]) is None  # another key's
    assert provider.uploads == ["pb_1.jsonl", "pb_2.jsonl"]
    assert ALICE["Authorization"] == headers[0][1]


async def test_two_processes_bridges_on_one_database_take_turns_and_upload_each_file_once(provider, job_database):
    """Workers or replicas share the job database: one bridge acts per lane, the other takes over when it dies."""
    from policies.path.provider_batching import BatchApiParams
    from router.jobs.engines import open_database
    from router.jobs.provider.bridge import LEASE_S, ProviderBridge
    from router.jobs.store import JobStore, NewJob

    databases = [await open_database(job_database), await open_database(job_database)]
    params = BatchApiParams(api="openai", max_requests=10, max_wait="30s", poll="20ms")
    bridges = [
        ProviderBridge(
            db, lane="batch", params=params, base_url=provider.url, fallback="realtime", record=lambda *_: None
        )
        for db in databases
    ]
    store = JobStore(databases[0])
    provider.hold = True
    try:
        for bridge in bridges:
            bridge.start()
        credentials = [("authorization", "Bearer sk-alice-1234")]
        jobs = [
            (await store.submit(NewJob("POST", "/v1/chat/completions", [], chat(i), "alice", credentials), 1.0))[0]
            for i in range(30)
        ]
        await until(lambda: len(provider.created) == 3)
        await asyncio.sleep(0.5)  # a few more ticks of both
        assert sorted(provider.uploads) == sorted(set(provider.uploads)) and len(provider.uploads) == 3
        holder = next(b for b in bridges if b.holding)
        assert [b.holding for b in bridges].count(True) == 1
        await holder.close()  # the worker that held the lease dies
        provider.hold = False
        await until(lambda: provider.batches[provider.created[-1]].status == "completed", timeout_s=LEASE_S + 10)

        async def all_done() -> bool:
            states = [(await store.get(job.id, "alice")).state for job in jobs]
            return states == ["succeeded"] * len(jobs)

        async with asyncio.timeout(10):
            while not await all_done():
                await asyncio.sleep(0.05)
        assert len(provider.uploads) == 3 and len(provider.created) == 3
    finally:
        for bridge in bridges:
            await bridge.close()
        for db in databases:
            await db.close()
