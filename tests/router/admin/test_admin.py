"""The admin API: authorization, status, commands, and reloads under load."""

import asyncio
import json

import yaml

from configs import load_config
from tests.router.helpers import admin_headers, gather_limited, two_lane_config, two_lane_raw


async def test_every_admin_path_needs_the_token(upstream, start_router, client, monkeypatch):
    realtime = await upstream()
    router = await start_router(two_lane_config([realtime.url], [realtime.url]))
    paths = (("GET", "/status"), ("GET", "/history"), ("GET", "/decisions"), ("POST", "/mode"), ("GET", "/nope"))
    for method, path in paths:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdA=="}):
            async with client.request(method, f"{router.admin_url}{path}", headers=headers) as response:
                assert response.status == 401
                assert "MODESHIFT_TEST_TOKEN" in (await response.json())["error"]["message"]
    async with client.get(f"{router.admin_url}/nope", headers=admin_headers()) as response:
        assert response.status == 404
    monkeypatch.delenv("MODESHIFT_TEST_TOKEN")
    async with client.get(f"{router.admin_url}/status", headers=admin_headers()) as response:
        assert response.status == 401
        assert "is off" in (await response.json())["error"]["message"]


async def test_status_and_commands(upstream, start_router, client):
    realtime, batch = await upstream(), await upstream()
    router = await start_router(two_lane_config([realtime.url], [batch.url]))
    admin = router.admin_url
    h = admin_headers()
    async with client.get(f"{router.url}/x"):
        pass
    async with client.get(f"{admin}/status", headers=h) as response:
        status = await response.json()
    assert status["mode"] == "realtime" and status["state"] == "steady" and status["heading_to"] is None
    assert status["weights"] == {"realtime": 1.0, "batch": 0.0}
    assert status["lanes"]["realtime"]["arrivals"] == 1
    assert status["lanes"]["batch"]["p95_s"] is None  # no data is null, never 0
    assert status["lanes"]["realtime"]["upstreams"][0]["url"] == realtime.url
    assert status["objectives"]["switchable"] | {"priority": None} == {
        "latency_s": None,  # none declared: only errors count
        "wanted": 0.99,
        "error_budget": 0.01,
        "priority": None,
        "requests": 1,
        "attainment": 1.0,
        "errors": 0,
    }
    assert status["objectives"]["pinned"]["attainment"] is None and status["objectives"]["pinned"]["priority"] == 0

    async with client.post(f"{admin}/mode", json={"mode": "batch", "gradual": True}, headers=h) as response:
        assert response.status == 200
        assert [a["kind"] for a in (await response.json())["actions"]] == ["TransitionStarted", "SetWeights"]
    async with client.get(f"{admin}/status", headers=h) as response:
        moving = await response.json()
    assert moving["mode"] is None and moving["heading_to"] == "batch"  # between modes, and says which way
    async with client.post(f"{admin}/pause", headers=h) as response:
        assert response.status == 200
    async with client.post(f"{admin}/pause", headers=h) as response:
        assert response.status == 409
        assert (await response.json())["error"]["message"] == "already paused"
    async with client.post(f"{admin}/resume", headers=h) as response:
        assert response.status == 200
    async with client.post(f"{admin}/rollback", json={"reason": "operator changed their mind"}, headers=h) as response:
        assert response.status == 200
    async with client.get(f"{admin}/status", headers=h) as response:
        status = await response.json()
    assert status["weights"] == {"realtime": 1.0, "batch": 0.0}
    assert status["decisions"][-2]["kind"] == "RolledBack"
    assert status["decisions"][-2]["reason"] == "operator changed their mind"

    async with client.post(f"{admin}/mode", json={"mode": "warp"}, headers=h) as response:
        assert response.status == 400  # a bad request: no state of the controller would take it
        assert (
            "'warp' is not one of the config's modes: batch, hybrid, realtime"
            in (await response.json())["error"]["message"]
        )
    async with client.post(f"{admin}/mode", json={"mode": "batch", "speed": 3}, headers=h) as response:
        assert response.status == 400
        assert "speed" in (await response.json())["error"]["message"]
    async with client.post(f"{admin}/mode", data=b"{not json", headers=h) as response:
        assert response.status == 400


def write_config(path, realtime: list[str], batch: list[str], **overrides) -> None:
    path.write_text(yaml.safe_dump(two_lane_raw(realtime, batch, **overrides)))


async def test_a_bad_reload_under_load_fails_no_request(upstream, start_router, client, tmp_path):
    first, second = await upstream(), await upstream()
    path = tmp_path / "modeshift.yaml"
    write_config(path, [first.url], [first.url], initial_mode="hybrid")
    router = await start_router(load_config(path), config_path=path)
    h = admin_headers()
    statuses: list[int] = []
    reloads: list[tuple[int, dict]] = []

    async def one(i: int) -> None:
        if i == 200:
            path.write_text(path.read_text().replace("initial_mode: hybrid", "initial_mode: hybird"))
            async with client.post(f"{router.admin_url}/reload", headers=h) as response:
                reloads.append((response.status, await response.json()))
        if i == 400:
            write_config(path, [first.url, second.url], [second.url], initial_mode="hybrid")
            async with client.post(f"{router.admin_url}/reload", headers=h) as response:
                reloads.append((response.status, await response.json()))
        async with client.post(f"{router.url}/x", data=b"payload") as response:
            await response.read()
            statuses.append(response.status)

    await asyncio.wait_for(gather_limited(800, 16, one), timeout=120)
    assert statuses == [200] * 800
    (bad_status, bad), (good_status, good) = reloads
    assert bad_status == 422
    assert bad["error"]["type"] == "invalid_config"
    assert bad["error"]["lines"] and all(line.startswith(f"{path}:") for line in bad["error"]["lines"])
    assert any("hybird" in line for line in bad["error"]["lines"])
    assert good_status == 200 and good["kind"] == "Reloaded"
    assert sorted(good["replaced_lanes"]) == ["batch", "realtime"] and good["kept_control"] is True
    assert second.seen  # the new upstream list is in use
    assert router.runtime.state.control.controller.mode == "hybrid"


async def test_a_reload_that_cannot_be_applied_answers_422_and_keeps_the_old_config(
    upstream, start_router, client, tmp_path, monkeypatch
):
    server = await upstream()
    path = tmp_path / "modeshift.yaml"
    write_config(path, [server.url], [server.url])
    router = await start_router(load_config(path), config_path=path)
    old = router.runtime.state

    def cannot_build(*args, **kwargs):
        raise OSError("no file descriptors left")  # anything past validation: the state is never swapped

    monkeypatch.setattr("router.runtime.carry_over", cannot_build)
    async with client.post(f"{router.admin_url}/reload", headers=admin_headers()) as response:
        assert response.status == 422
        error = (await response.json())["error"]
    assert error["type"] == "invalid_config" and "no file descriptors left" in error["lines"][0]
    assert router.runtime.state is old
    async with client.get(f"{router.url}/x") as response:
        assert response.status == 200


async def test_a_reload_of_nested_aliases_is_a_short_json_422_and_the_old_config_serves_on(
    upstream, start_router, client, tmp_path
):
    """352 bytes of nested YAML aliases once blocked the loop 9.7 s and came back as a 105 MB 422."""
    server = await upstream()
    path = tmp_path / "modeshift.yaml"
    write_config(path, [server.url], [server.url])
    router = await start_router(load_config(path), config_path=path)
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x","x"]\n'
    for level in range(1, 9):  # 10^9 values once expanded
        bomb += f"{chr(97 + level)}: &{chr(97 + level)} [" + ",".join([f"*{chr(96 + level)}"] * 10) + "]\n"
    path.write_text(bomb)
    async with client.post(f"{router.admin_url}/reload", headers=admin_headers()) as response:
        assert response.status == 422
        body = await response.read()
    assert len(body) < 2000
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_config" and "aliases" in error["lines"][0]
    async with client.get(f"{router.url}/x") as response:
        assert response.status == 200  # the old config serves on
