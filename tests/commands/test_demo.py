"""The demo's live stack: real backends and router as processes, traffic through both lanes, all stopped after."""

from __future__ import annotations

import socket

import aiohttp

from commands.demo import Schedule, run_demo
from commands.demo_stack import LocalStack
from commands.replay import replay
from configs import ready_config_path
from simulator.traces import bundled_azure_slice


def listening(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) == 0


async def test_the_stack_serves_both_lanes_and_stops_every_process():
    with LocalStack(ready_config_path("default")) as stack:
        async with aiohttp.ClientSession() as session:
            answers = []
            for mode in ("realtime", "batch"):
                headers = {"X-Modeshift-Mode": mode}
                async with session.post(f"{stack.data_url}/v1/embeddings", json={"input": "hi"}, headers=headers) as r:
                    answers.append(
                        (r.status, r.headers["X-Modeshift-Lane"], len((await r.json())["data"][0]["embedding"]))
                    )
            status = await stack.status(session)
        results = await replay(f"{stack.data_url}/v1/embeddings", bundled_azure_slice()[:20])
        children = [child for _, child in stack._children]
        urls = [stack.data_url, stack.admin_url]
    assert answers == [(200, "realtime", 384), (200, "batch", 384)]
    assert status["mode"] == "realtime" and set(status["lanes"]) == {"realtime", "batch"}
    assert len(results) == 20 and all(r.status == 200 and r.lane == "realtime" for r in results)
    assert all(child.returncode is not None for child in children)
    assert not any(listening(url) for url in urls)


def test_a_short_demo_prints_its_report(capsys):
    assert run_demo(Schedule(calm_s=2.0, rush_s=2.0, speedup=4.0, length_s=6.0)) == 0
    out = capsys.readouterr().out
    assert "requests per lane" in out and "realtime" in out
    assert "cost per 1k requests" in out
    assert "transitions" in out
