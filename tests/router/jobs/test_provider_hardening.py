"""The provider bridge's weak spots (issue 29, item 6), each against the loopback stand-in in a failure mode.

A provider that cannot list, an output file streamed slowly, stray lines in
an output file, a batch that never ends, batch creations that keep failing.
"""

from __future__ import annotations

import asyncio
import json
import time

from tests.router.helpers import admin_headers
from tests.router.jobs.test_provider_lanes import chat, one_file, outcome, provider_config, submit, until_made


async def provider_view(client, router) -> dict:
    async with client.get(f"{router.admin_url}/status", headers=admin_headers()) as response:
        return (await response.json())["provider"]


async def test_a_provider_that_cannot_list_keeps_the_discount(upstream, provider, start_router, client, job_database):
    """Listing is only for finding what a crash left half-made: a 405 there must not send every job to list price."""
    realtime = await upstream()
    provider.listing_status = 405
    router = await start_router(provider_config(realtime.url, provider.url, job_database, **one_file(5)))
    locations = [await submit(client, router, chat(i)) for i in range(5)]
    jobs = [await outcome(client, router, location) for location in locations]
    assert [job["status"] for job in jobs] == ["succeeded"] * 5
    assert len(provider.created) == 1 and not realtime.seen  # through the Batch API, none at list price


async def test_results_are_applied_as_the_output_file_streams_in(
    upstream, provider, start_router, client, job_database
):
    """The output file is read line by line: jobs end while its tail is still on the wire, so memory stays bounded
    by a chunk, not the file (a 300 MB file took the router from 114 MB to 1.07 GB)."""
    realtime = await upstream()
    provider.tail_held = asyncio.Event()
    lines = 400
    router = await start_router(provider_config(realtime.url, provider.url, job_database, **one_file(lines)))
    big = " ".join(["word"] * 200)  # each answer echoes its text: a file of about 0.6 MB
    locations = [await submit(client, router, chat(i, big)) for i in range(lines)]
    async with asyncio.timeout(20):
        while True:  # the head of the file is in; its tail waits at the provider
            async with client.get(
                f"{router.url}{locations[0]}", headers={"Authorization": "Bearer sk-alice-1234"}
            ) as r:
                if (await r.json())["status"] == "succeeded":
                    break
            await asyncio.sleep(0.05)
    assert provider.streamed_heads == 1 and not provider.tail_held.is_set()
    provider.tail_held.set()
    jobs = [await outcome(client, router, location) for location in locations]
    assert [job["status"] for job in jobs] == ["succeeded"] * lines


async def test_stray_output_lines_are_counted_and_never_booked(upstream, provider, start_router, client, job_database):
    realtime = await upstream()
    router = await start_router(provider_config(realtime.url, provider.url, job_database, **one_file(4)))
    locations = [await submit(client, router, chat(i)) for i in range(4)]
    await until_made(provider)
    job_id = locations[0].rsplit("/", 1)[1]
    answer = {
        "status_code": 200,
        "body": {"choices": [], "usage": {"prompt_tokens": 10**6, "completion_tokens": 10**6}},
    }
    provider.stray_output_lines = [
        *(json.dumps({"custom_id": f"job_unknown_{i}", "response": answer}).encode() for i in range(30)),
        *(json.dumps({"custom_id": job_id, "response": answer}).encode() for _ in range(5)),  # duplicates
        b"{this is not json",
    ]
    jobs = [await outcome(client, router, location) for location in locations]
    assert [job["status"] for job in jobs] == ["succeeded"] * 4
    lane = router.runtime.state.lanes["batch"].window.since_start
    assert lane.completions == 4  # booked once each, the strays never
    assert lane.input_tokens < 10**6
    view = await provider_view(client, router)
    assert view["lines"]["unknown"] == 30 and view["lines"]["duplicate"] == 5 and view["lines"]["malformed"] == 1


async def test_a_batch_past_its_completion_window_is_cancelled_and_its_jobs_run_on_the_fallback(
    upstream, provider, start_router, client, job_database
):
    realtime = await upstream()
    provider.hold = True  # the batch never ends at the provider
    router = await start_router(provider_config(realtime.url, provider.url, job_database, **one_file(3)))
    locations = [await submit(client, router, chat(i)) for i in range(3)]
    await until_made(provider)
    async with asyncio.timeout(5):
        while not (batches := await router.runtime.jobs.bridge.store.batches("batch")) or batches[0].remote_id is None:
            await asyncio.sleep(0.02)
    bridge = router.runtime.jobs.bridge
    await bridge.step(time.time() + 24 * 3600 + 400)  # a day and the margin later
    jobs = [await outcome(client, router, location) for location in locations]
    assert [job["status"] for job in jobs] == ["succeeded"] * 3
    assert len(realtime.seen) == 3 and provider.cancelled == provider.created
    view = await provider_view(client, router)
    assert view["fallbacks"]["completion_window"] == 3
    assert "completion window" in view["last_fallback"]["reason"]


async def test_creations_that_keep_failing_fall_back_and_say_why(
    upstream, provider, start_router, client, job_database
):
    realtime = await upstream()
    provider.failing_creates = 10**6
    router = await start_router(
        provider_config(realtime.url, provider.url, job_database, upload_attempts=3, **one_file(2))
    )
    locations = [await submit(client, router, chat(i)) for i in range(2)]
    async with asyncio.timeout(10):  # while it backs off, the job says why it waits
        while True:
            async with client.get(
                f"{router.url}{locations[0]}", headers={"Authorization": "Bearer sk-alice-1234"}
            ) as r:
                job = await r.json()
            if job["error"] and "500" in job["error"]:
                break
            await asyncio.sleep(0.02)
    jobs = [await outcome(client, router, location) for location in locations]
    assert [job["status"] for job in jobs] == ["succeeded"] * 2 and len(realtime.seen) == 2
    view = await provider_view(client, router)
    assert view["fallbacks"]["refused"] == 2 and "500" in view["last_fallback"]["reason"]
