"""The status page end to end: headless Chromium (Debian's) driven by Playwright against a running router.

`make test` installs Debian's chromium first; a missing browser fails this
test, never skips it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.async_api import async_playwright, expect

from tests.router.helpers import TOKEN, admin_headers, two_lane_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("MODESHIFT_ARTIFACTS", "test-artifacts"))
# Flags for a sandboxed, offline machine: no background connections, no GPU.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if CHROMIUM is None:
    raise RuntimeError("chromium is not installed: `make test` installs it (apt-get install chromium)")


@pytest.fixture
async def page():
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield await browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            await browser.close()


async def test_the_page_shows_the_weights_change_after_a_forced_switch(upstream, start_router, client, page):
    server = await upstream()
    router = await start_router(two_lane_config([server.url], [server.url]))
    for i in range(60):  # some traffic and a tick every few requests, so the chart has lines
        async with client.get(f"{router.url}/a", headers={"X-Modeshift-Mode": "batch"} if i % 3 else {}) as r:
            assert r.status == 200
        if i % 4 == 3:
            router.tick(advance_s=5.0)
    await page.goto(f"{router.admin_url}/#token={TOKEN}")
    await expect(page.locator("#mode")).to_have_text("realtime")
    await expect(page.locator(".weight[data-lane=realtime]")).to_have_text("100%")
    await expect(page.locator(".weight[data-lane=batch]")).to_have_text("0%")
    await expect(page.locator("#chart-rate polyline[data-lane=batch]")).to_have_count(1)
    assert "token" not in page.url  # dropped from the address bar once read

    async with client.post(
        f"{router.admin_url}/mode", json={"mode": "batch", "gradual": False}, headers=admin_headers()
    ) as response:
        assert response.status == 200
    await expect(page.locator(".weight[data-lane=batch]")).to_have_text("100%")
    await expect(page.locator(".weight[data-lane=realtime]")).to_have_text("0%")
    await expect(page.locator("#mode")).to_have_text("batch")
    await expect(page.locator("#decisions")).to_contain_text("TransitionCompleted")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "status_page.png", full_page=True)


async def test_a_wrong_token_asks_for_the_token_again(upstream, start_router, page):
    server = await upstream()
    router = await start_router(two_lane_config([server.url], [server.url]))
    await page.goto(f"{router.admin_url}/#token=wrong")
    await expect(page.locator("#login")).to_be_visible()
    await expect(page.locator("#problem")).to_contain_text("Bearer")
    await page.fill("#token", TOKEN)
    await page.click("#login button")
    await expect(page.locator(".weight[data-lane=realtime]")).to_have_text("100%")


async def test_a_cluster_replica_says_who_leads_and_when_redis_is_gone(redis_server, upstream, page, monkeypatch):
    from router.server import RunningRouter, runtime_for
    from tests.router.cluster.test_cluster import cluster_config
    from tests.router.helpers import FakeClock

    monkeypatch.setenv("MODESHIFT_TEST_TOKEN", TOKEN)
    server = await upstream()
    runtime = runtime_for(cluster_config(redis_server.url, "web-1", server.url, server.url), clock=FakeClock())
    router = RunningRouter(runtime)
    await router.start(data=("127.0.0.1", 0), admin=("127.0.0.1", 0), ticking=False)
    try:
        await runtime.tick_async()
        host, port = router.admin_address
        await page.goto(f"http://{host}:{port}/#token={TOKEN}")
        await expect(page.locator("#cluster")).to_have_text("replica web-1 of test, 1 in all · leader web-1 (epoch 1)")
        redis_server.stop()
        await runtime.tick_async()
        await expect(page.locator("#cluster")).to_have_text("replica web-1 of test · Redis unreachable: weights held")
    finally:
        await router.stop()


async def test_an_idle_lane_shows_no_latency_and_the_latency_chart_is_log_scaled(upstream, start_router, client, page):
    server = await upstream()
    router = await start_router(two_lane_config([server.url], [server.url]))
    for i in range(20):  # traffic on the real-time lane only: the batch lane answers nothing
        async with client.get(f"{router.url}/a") as response:
            assert response.status == 200
        if i % 5 == 4:
            router.tick(advance_s=5.0)
    await page.goto(f"{router.admin_url}/#token={TOKEN}")
    await expect(page.locator("tr[data-lane=batch] td.p50_s")).to_have_text("–")
    await expect(page.locator("tr[data-lane=batch] td.p95_s")).to_have_text("–")
    await expect(page.locator("tr[data-lane=realtime] td.p50_s")).not_to_have_text("–")
    await expect(page.locator("#chart-latency")).to_have_attribute("data-scale", "log")
    assert await page.locator("#chart-latency text.tick").count() >= 2  # powers of ten, not only 0 and the top
    assert await page.locator("#chart-rate text.tick").count() == 3  # 0, half, top


async def test_a_provider_lane_that_fell_back_to_list_price_says_so(
    upstream, provider, start_router, client, page, tmp_path
):
    from tests.router.jobs.test_provider_lanes import chat, outcome, provider_config, submit

    realtime = await upstream()
    provider.failing_creates = 10**6  # the provider never takes the batch
    database = str(tmp_path / "jobs.sqlite3")
    router = await start_router(
        provider_config(realtime.url, provider.url, database, upload_attempts=1, max_requests=1, max_wait="30s")
    )
    await outcome(client, router, await submit(client, router, chat(0)))
    await page.goto(f"{router.admin_url}/#token={TOKEN}")
    await expect(page.locator("#fallback")).to_contain_text("1 jobs ran on realtime at its price", timeout=15_000)
