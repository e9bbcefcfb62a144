"""The demo's live stack: real backends and router as processes, traffic through both lanes, all stopped after."""

from __future__ import annotations

import csv
import json
import socket

import aiohttp
import pytest
from rich.console import Console

from commands.demo import DemoOptions, Schedule, play_demo
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
                headers = {"X-Modeshift-Mode": mode, "Authorization": "Bearer modeshift-demo"}  # the config's operator
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


def test_a_short_demo_reports_every_request_and_prints_the_figures_it_reports(tmp_path):
    schedule = Schedule(calm_s=2.0, rush_s=2.0, speedup=4.0, length_s=6.0)
    console = Console(record=True, width=200)
    report = play_demo(schedule, console, DemoOptions(out=tmp_path / "report", linger_s=0))
    sent = len(schedule.trace()[0])
    assert report.requests_sent == sent and sent > 20
    assert sum(lane.requests for lane in report.lanes.values()) == sent  # every request answered, by a lane
    assert set(report.lanes) <= {"realtime", "batch"} and report.lanes["realtime"].requests > 0
    assert all(lane.errors == 0 for lane in report.lanes.values())
    for lane in report.lanes.values():
        assert 0 < lane.p50_ms <= lane.p95_ms <= lane.p99_ms < 30_000
    assert report.cost_per_1k_usd is not None and report.cost_per_1k_usd > 0
    assert report.all_realtime_per_1k_usd is not None and report.all_realtime_per_1k_usd > 0
    out = console.export_text()
    for name, lane in report.lanes.items():
        assert f"{lane.requests:,}" in out and f"{lane.p95_ms:.0f}" in out and name in out
    assert f"${report.cost_per_1k_usd:.4f} with modeshift" in out

    assert "/#token=" in report.status_page  # the status page's address, with the token it needs
    with open(tmp_path / "report" / "requests.csv") as f:
        assert len(list(csv.DictReader(f))) == sent
    decisions = [json.loads(line) for line in (tmp_path / "report" / "decisions.jsonl").read_text().splitlines()]
    assert all("kind" in d and "t" in d for d in decisions)  # a short calm run may decide nothing
    assert sorted(p.name for p in (tmp_path / "report").glob("*.png")) == ["cumulative-cost.png", "demo.png"]


def test_the_demo_lists_its_options(capsys):
    from commands.cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    shown = capsys.readouterr().out
    assert all(option in shown for option in ("--config", "--speedup", "--length", "--out", "--linger"))
    assert main(["demo", "--linger", "-5"]) == 2  # refused before anything starts
    assert "--linger must be 0 or more seconds" in capsys.readouterr().err


def test_the_progress_line_ends_on_the_counts_the_table_shows(tmp_path):
    schedule = Schedule(calm_s=1.0, rush_s=1.0, speedup=4.0, length_s=3.0)
    console = Console(record=True, width=200)
    report = play_demo(schedule, console)
    served = " ".join(f"{lane} {figures.requests}" for lane, figures in sorted(report.lanes.items()))
    assert f"served {served}" in console.export_text()
