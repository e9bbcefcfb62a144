"""Provider batch lanes: jobs gathered into the stand-in provider's Batch API, mapped back, and fallen back.

A real router, a real SQLite store and the loopback stand-in of OpenAI's and
Anthropic's APIs (tests/standins/provider.py). The bridge runs on the wall
clock, with polls and flushes of milliseconds.
"""

from __future__ import annotations

import asyncio
import json

from configs import ModeshiftConfig
from tests.router.helpers import admin_headers, gather_limited, two_lane_raw
from tests.standins.provider import POISON

ALICE = {"Authorization": "Bearer sk-alice-1234", "Prefer": "respond-async"}
CHAT = "/v1/chat/completions"


def provider_raw(realtime: str, provider: str, database: str, api: str = "openai", **batch_api) -> dict:
    raw = two_lane_raw(
        [realtime],
        [provider],
        lanes={
            "realtime": {"upstreams": [realtime], "timeout": "10s"},
            "batch": {
                "upstreams": [provider],
                "batch_api": {"api": api, "poll": "20ms", "max_wait": "100ms", **batch_api},
                "cost": {"per_1k_input_tokens": 0.002, "per_1k_output_tokens": 0.008, "discount": 0.5},
            },
        },
        jobs={"database": database, "backoff": "10ms"},
    )
    raw["modes"] = {"realtime": {"realtime": 1.0}}  # a provider batch lane takes jobs only: no mode weighs it
    return raw


def provider_config(*args, **kwargs) -> ModeshiftConfig:
    return ModeshiftConfig.model_validate(provider_raw(*args, **kwargs), context={})


def one_file(lines: int) -> dict:
    """Settings that gather `lines` jobs into one file however slowly they arrive: it goes when full."""
    return {"max_requests": lines, "max_wait": "30s"}


def chat(n: int, text: str = "hello") -> bytes:
    return json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"{text} {n}"}]}).encode()


async def submit(client, router, body: bytes, path: str = CHAT, headers=ALICE) -> str:
    async with client.post(f"{router.url}{path}", data=body, headers=headers) as response:
        assert response.status == 202, await response.text()
        return response.headers["Location"]


async def until_made(provider, timeout_s: float = 5.0) -> None:
    """Until the stand-in has a batch made at it."""
    async with asyncio.timeout(timeout_s):
        while not provider.created:
            await asyncio.sleep(0.02)


async def outcome(client, router, location: str, timeout_s: float = 20.0, headers=ALICE) -> dict:
    async with asyncio.timeout(timeout_s):
        while True:
            async with client.get(f"{router.url}{location}", headers=headers) as response:
                job = await response.json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            await asyncio.sleep(0.05)


async def test_a_thousand_async_chat_jobs_become_a_handful_of_provider_batches(
    upstream, provider, start_router, client, job_database
):
    realtime = await upstream()
    router = await start_router(
        provider_config(realtime.url, provider.url, job_database, max_requests=300, max_wait="3s")
    )
    locations = await gather_limited(1000, 50, lambda i: submit(client, router, chat(i)))
    jobs = await gather_limited(1000, 50, lambda i: outcome(client, router, locations[i], timeout_s=60))
    assert [job["status"] for job in jobs] == ["succeeded"] * 1000
    for i, job in enumerate(jobs):
        answer = job["response"]["body"]
        assert answer["choices"][0]["message"]["content"] == f"echo: hello {i}" and answer["key_tail"] == "1234"
    assert len(provider.created) == 4  # 300 + 300 + 300 + 100: files flush when full, the last after max_wait
    assert len(provider.uploads) == len(set(provider.uploads)) == 4
    assert not realtime.seen
    async with client.get(f"{router.admin_url}/v1/provider_batches", headers=admin_headers()) as response:
        stored = (await response.json())["data"]
    assert sorted(batch["lines"] for batch in stored) == [100, 300, 300, 300]
    assert {batch["status"] for batch in stored} == {"ended"}
    assert sorted(batch["remote_id"] for batch in stored) == sorted(provider.created)
    assert "sk-alice" not in json.dumps(stored)


async def test_one_poisoned_line_fails_alone_with_the_providers_error(
    upstream, provider, start_router, client, job_database
):
    realtime = await upstream()
    router = await start_router(provider_config(realtime.url, provider.url, job_database, **one_file(10)))
    bodies = [chat(i, POISON if i == 3 else "hello") for i in range(10)]
    locations = [await submit(client, router, body) for body in bodies]
    jobs = [await outcome(client, router, location) for location in locations]
    assert [job["status"] for job in jobs] == ["succeeded"] * 3 + ["failed"] + ["succeeded"] * 6
    poisoned = jobs[3]
    assert poisoned["response"]["status_code"] == 400
    assert poisoned["response"]["body"]["error"]["code"] == "poisoned"
    assert len(provider.created) == 1 and not realtime.seen


async def test_an_expired_batchs_unanswered_lines_run_again_on_the_real_time_lane(
    upstream, provider, start_router, client, job_database
):
    realtime = await upstream()
    provider.outcome, provider.answered_before_expiry = "expired", 4
    router = await start_router(provider_config(realtime.url, provider.url, job_database, **one_file(10)))
    locations = [await submit(client, router, chat(i)) for i in range(10)]
    jobs = [await outcome(client, router, location) for location in locations]
    assert [job["status"] for job in jobs] == ["succeeded"] * 10
    from_provider = [job for job in jobs if "key_tail" in (job["response"]["body"] or {})]
    rerun = [job for job in jobs if job["response"]["headers"].get("X-Modeshift-Lane") == "realtime"]
    assert len(from_provider) == 4 and len(rerun) == 6 and len(realtime.seen) == 6
    assert all(request.headers["Authorization"] == "Bearer sk-alice-1234" for request in realtime.seen)
    async with client.get(f"{router.admin_url}/metrics", headers=admin_headers()) as response:
        metrics = await response.text()
    assert 'modeshift_provider_batches_total{event="submitted",lane="batch"} 1.0' in metrics
    assert 'modeshift_provider_lines_total{lane="batch",outcome="answered"} 4.0' in metrics
    assert 'modeshift_provider_lines_total{lane="batch",outcome="rerun"} 6.0' in metrics


async def test_a_job_whose_deadline_nears_runs_on_the_real_time_lane_and_its_empty_batch_is_cancelled(
    upstream, provider, start_router, client, job_database
):
    realtime = await upstream()
    provider.hold = True  # the provider never finishes
    router = await start_router(provider_config(realtime.url, provider.url, job_database, deadline_margin="2s"))
    soon = {**ALICE, "X-Modeshift-Deadline-Ms": "3000"}
    location = await submit(client, router, chat(0), headers=soon)
    await until_made(provider)  # gathered and uploaded first: the deadline is not near yet
    job = await outcome(client, router, location)
    assert job["status"] == "succeeded" and job["response"]["headers"]["X-Modeshift-Lane"] == "realtime"
    async with asyncio.timeout(5):
        while not provider.cancelled:
            await asyncio.sleep(0.02)
    assert provider.cancelled == provider.created


async def test_cancelling_every_job_of_a_provider_batch_cancels_the_batch(
    upstream, provider, start_router, client, job_database
):
    realtime = await upstream()
    provider.hold = True
    router = await start_router(provider_config(realtime.url, provider.url, job_database, **one_file(3)))
    locations = [await submit(client, router, chat(i)) for i in range(3)]
    await until_made(provider)
    for n, location in enumerate(locations):
        async with client.delete(f"{router.url}{location}", headers=ALICE) as response:
            assert response.status == 200 and (await response.json())["status"] == "cancelled"
        await asyncio.sleep(0.3)  # a few bridge ticks
        assert provider.cancelled == ([] if n < 2 else provider.created)
    assert not realtime.seen


async def test_anthropic_message_batches_map_results_by_custom_id(
    upstream, provider, start_router, client, job_database
):
    realtime = await upstream()
    provider.outcome, provider.answered_before_expiry = "expired", 5
    router = await start_router(
        provider_config(realtime.url, provider.url, job_database, api="anthropic", **one_file(8))
    )
    headers = {"x-api-key": "sk-ant-9876", "Prefer": "respond-async"}

    def message(i: int) -> bytes:
        text = POISON if i == 1 else f"hi {i}"
        messages = [{"role": "user", "content": text}]
        return json.dumps({"model": "claude-x", "max_tokens": 16, "messages": messages}).encode()

    locations = [await submit(client, router, message(i), "/v1/messages", headers) for i in range(8)]
    jobs = [await outcome(client, router, location, headers=headers) for location in locations]
    assert jobs[0]["status"] == "succeeded" and jobs[0]["response"]["body"]["content"][0]["text"] == "echo: hi 0"
    assert jobs[1]["status"] == "failed" and jobs[1]["response"]["status_code"] == 400
    assert jobs[1]["response"]["body"]["error"]["type"] == "invalid_request_error"
    assert [job["status"] for job in jobs[5:]] == ["succeeded"] * 3  # expired at the provider: run live
    assert len(realtime.seen) == 3 and len(provider.created) == 1


async def test_a_request_the_batch_api_cannot_take_runs_on_the_fallback_lane(
    upstream, provider, start_router, client, job_database
):
    realtime = await upstream()
    router = await start_router(provider_config(realtime.url, provider.url, job_database))
    location = await submit(client, router, b"not json", "/v1/other")
    job = await outcome(client, router, location)
    assert job["status"] == "succeeded" and job["response"]["headers"]["X-Modeshift-Lane"] == "realtime"
    assert not provider.created


async def test_a_provider_lines_cost_is_booked_on_its_lane_at_the_batch_discount(
    upstream, provider, start_router, client, job_database
):
    realtime = await upstream()
    router = await start_router(provider_config(realtime.url, provider.url, job_database))
    for location in [await submit(client, router, chat(i)) for i in range(4)]:
        await outcome(client, router, location)
    reading = router.runtime.state.lanes["batch"].window.read(router.clock())
    # 10 input and 5 output tokens a line (the stand-in's usage), at half of 0.002 and 0.008 per 1,000
    assert reading.window.completions == 4
    assert abs(reading.window.cost_usd - 4 * (10 * 0.002 + 5 * 0.008) / 1000 * 0.5) < 1e-12


async def test_a_routers_own_batches_api_serves_as_the_provider_of_another_router(
    upstream, provider, start_router, client, tmp_path
):
    """Router B's provider batch lane speaks to router A's /v1/files and /v1/batches, which run each line
    through A's own batch lane (here the stand-in's sync chat)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a_raw = two_lane_raw(
        [provider.url], [provider.url], jobs={"database": str(tmp_path / "a" / "jobs.sqlite3"), "backoff": "10ms"}
    )
    router_a = await start_router(ModeshiftConfig.model_validate(a_raw, context={}))
    realtime = await upstream()
    b_database = str(tmp_path / "b" / "jobs.sqlite3")
    router_b = await start_router(provider_config(realtime.url, router_a.url, b_database, **one_file(6)))
    locations = [await submit(client, router_b, chat(i, POISON if i == 2 else "via a")) for i in range(6)]
    jobs = [await outcome(client, router_b, location) for location in locations]
    assert [job["status"] for job in jobs] == ["succeeded"] * 6  # A has no poison rule: its upstream answers all
    assert [job["response"]["body"]["choices"][0]["message"]["content"] for job in jobs] == [
        f"echo: {POISON if i == 2 else 'via a'} {i}" for i in range(6)
    ]
    assert provider.chat_tiers == [None] * 6  # each line ran once, at A, as a sync call
    assert not realtime.seen and not provider.created  # nothing fell back; A made its batch itself
    async with client.get(f"{router_a.url}/v1/batches", headers=ALICE) as response:
        (made,) = (await response.json())["data"]
    assert made["status"] == "completed" and made["metadata"]["modeshift_batch"].startswith("pb_")
    assert made["request_counts"] == {"total": 6, "completed": 6, "failed": 0}


async def test_a_batch_the_provider_no_longer_knows_gives_its_jobs_to_the_real_time_lane(
    upstream, provider, start_router, client, job_database
):
    realtime = await upstream()
    provider.hold = True
    router = await start_router(provider_config(realtime.url, provider.url, job_database, **one_file(2)))
    locations = [await submit(client, router, chat(i)) for i in range(2)]
    await until_made(provider)
    provider.batches.clear()  # the provider lost it: every poll is a 404 now
    jobs = [await outcome(client, router, location) for location in locations]
    assert [job["response"]["headers"]["X-Modeshift-Lane"] for job in jobs] == ["realtime", "realtime"]
    assert len(realtime.seen) == 2


async def test_two_tenants_jobs_go_in_batches_of_their_own_under_their_own_keys(
    upstream, provider, start_router, client, job_database
):
    realtime = await upstream()
    router = await start_router(provider_config(realtime.url, provider.url, job_database, **one_file(2)))
    bob = {"Authorization": "Bearer sk-bob-5678", "Prefer": "respond-async"}
    alice_jobs = [await submit(client, router, chat(i)) for i in range(2)]
    bob_jobs = [await submit(client, router, chat(i, "bob"), headers=bob) for i in range(2)]
    done = [await outcome(client, router, location) for location in alice_jobs]
    done += [await outcome(client, router, location, headers=bob) for location in bob_jobs]
    assert [job["response"]["body"]["key_tail"] for job in done] == ["1234", "1234", "5678", "5678"]
    assert sorted(batch.credential for batch in provider.batches.values()) == [
        "Bearer sk-alice-1234",
        "Bearer sk-bob-5678",
    ]  # one batch each, made and billed under its own key
    async with client.get(f"{router.url}{alice_jobs[0]}", headers=bob) as response:
        assert response.status == 404 and (await response.json())["error"]["type"] == "job_not_found"


async def test_a_live_request_pinned_to_a_provider_batch_lane_is_a_400_in_the_routers_shape(
    upstream, provider, start_router, client, job_database
):
    realtime = await upstream()
    router = await start_router(provider_config(realtime.url, provider.url, job_database))
    headers = {"Authorization": "Bearer sk-alice-1234", "X-Modeshift-Mode": "batch"}
    async with client.post(f"{router.url}{CHAT}", data=chat(0), headers=headers) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert "'batch' is not a lane; use one of realtime or auto" in error["message"] and error["request_id"]
    assert not provider.chat_tiers and not realtime.seen  # nothing was sent anywhere
