"""Async jobs against sending one by one: acceptance rate, completion throughput, cost per 1k items.

    python bench/jobs.py [--items 1000] [--corpus mixed|short] [--provider-jobs 10000]

Starts the demo's stack (the realtime and batch reference backends and the
router, configs/default.yaml, one torch thread per backend) and sends the
same embedding texts twice:
  jobs        each text as its own `Prefer: respond-async` request; the jobs
              run through the batch lane, merged by the router's micro-batcher
  one by one  each text as its own request pinned to the realtime lane,
              one at a time: the lanes bill busy time, each request its own
              latency, so overlapping requests on one single-threaded server
              would each be billed for the others' compute too
It prints accepted jobs/s (until the last 202), completion throughput (items/s
from the first submission to the last job done), and cost per 1k items two
ways: node time (the lane's price per hour x the phase's wall time, what a
dedicated node costs) and the router's attributed cost (from the admin API;
its busy billing charges every call its own latency, so calls that overlap
on one server are each charged for the shared time).

Then the provider lane (configs/provider.yaml's shape, in front of the
loopback stand-in of OpenAI's API, tests/standins/provider.py, which ends
each batch at its second poll): `--provider-jobs` chat jobs through the
Batch API bridge against as many sync chat calls on the realtime lane. It
prints jobs accepted/s, jobs/s from the first submission to the last answer
mapped back, the batch files made, and the cost per 1k requests the router
booked each way. The stand-in answers at once, so the jobs/s is the
bridge's own ceiling (gather, upload, poll, map, store), not a provider's.
Output also goes to bench/out/jobs.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml
from batching import CORPORA, texts

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from provider_lane import measure_provider  # noqa: E402

from commands.demo_stack import LocalStack  # noqa: E402

OUT = HERE / "out"


async def gather_limited(n: int, limit: int, make) -> list:
    gate = asyncio.Semaphore(limit)

    async def one(i: int):
        async with gate:
            return await make(i)

    return await asyncio.gather(*(one(i) for i in range(n)))


async def run_jobs(session: aiohttp.ClientSession, url: str, corpus: list[str]) -> tuple[float, float]:
    """(accepted per second, items per second to the last job done)."""
    started = time.perf_counter()

    async def submit(i: int) -> str:
        payload = {"model": "all-MiniLM-L6-v2", "input": corpus[i]}
        headers = {"Prefer": "respond-async", "Idempotency-Key": f"bench-{i}"}
        async with session.post(f"{url}/v1/embeddings", json=payload, headers=headers) as response:
            assert response.status == 202, await response.text()
            return response.headers["Location"]

    locations = await gather_limited(len(corpus), 64, submit)
    accepted_s = time.perf_counter() - started
    for location in locations:  # the runner works oldest first: wait for each in turn
        while True:
            async with session.get(f"{url}{location}") as response:
                job = await response.json()
            if job["status"] == "succeeded":
                break
            if job["status"] in ("failed", "cancelled"):
                raise RuntimeError(f"{location}: {job['status']}: {job['error']}")
            await asyncio.sleep(0.05)
    done_s = time.perf_counter() - started
    return len(corpus) / accepted_s, len(corpus) / done_s


async def run_one_by_one(session: aiohttp.ClientSession, url: str, corpus: list[str]) -> float:
    started = time.perf_counter()

    async def send(i: int) -> None:
        payload = {"model": "all-MiniLM-L6-v2", "input": corpus[i]}
        headers = {"X-Modeshift-Mode": "realtime"}
        async with session.post(f"{url}/v1/embeddings", json=payload, headers=headers) as response:
            assert response.status == 200, await response.text()
            await response.read()

    await gather_limited(len(corpus), 1, send)
    return len(corpus) / (time.perf_counter() - started)


async def measure(stack: LocalStack, corpus: list[str], price_per_hour: dict[str, float]) -> dict:
    async with aiohttp.ClientSession() as session:
        accepted, completed = await run_jobs(session, stack.data_url, corpus)
        batch_cost = (await stack.status(session))["lanes"]["batch"]["since_start"]["cost_usd"]
        realtime = await run_one_by_one(session, stack.data_url, corpus)
        realtime_cost = (await stack.status(session))["lanes"]["realtime"]["since_start"]["cost_usd"]
    per_1k = 1000 / len(corpus)
    node_s_per_item = {"jobs": 1 / completed, "realtime": 1 / realtime}
    return {
        "jobs_node_cost": price_per_hour["batch"] / 3600 * node_s_per_item["jobs"] * 1000,
        "realtime_node_cost": price_per_hour["realtime"] / 3600 * node_s_per_item["realtime"] * 1000,
        "accepted": accepted,
        "completed": completed,
        "realtime": realtime,
        "jobs_cost": batch_cost * per_1k,
        "realtime_cost": realtime_cost * per_1k,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="mixed")
    parser.add_argument(
        "--provider-jobs", type=int, default=10_000, help="chat jobs through the provider lane (0: skip)"
    )
    args = parser.parse_args()
    corpus = texts(args.items, CORPORA[args.corpus])
    with tempfile.TemporaryDirectory(prefix="modeshift-bench-jobs-") as work:
        raw = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
        raw["jobs"] = {**raw.get("jobs", {}), "database": str(Path(work) / "jobs.sqlite3")}
        config = Path(work) / "modeshift.yaml"
        config.write_text(yaml.safe_dump(raw, sort_keys=False))
        print(f"starting the stack (configs/default.yaml; {args.items} {args.corpus} texts) ...", flush=True)
        with LocalStack(config) as stack:
            prices = {lane: raw["lanes"][lane]["cost"]["per_hour"] for lane in ("realtime", "batch")}
            figures = asyncio.run(measure(stack, corpus, prices))
    lines = [
        f"{args.items} {args.corpus} texts, one per request; CPU, one torch thread per backend",
        f"jobs accepted (202, stored durably): {figures['accepted']:,.0f} jobs/s",
        f"jobs completed through the batch lane: {figures['completed']:,.1f} items/s",
        f"one by one through the realtime lane:  {figures['realtime']:,.1f} items/s "
        f"(jobs / one by one: {figures['completed'] / figures['realtime']:.2f}x)",
        f"cost per 1k items, node time: jobs ${figures['jobs_node_cost']:.4f}, one by one "
        f"${figures['realtime_node_cost']:.4f} "
        f"(jobs cost {figures['jobs_node_cost'] / figures['realtime_node_cost']:.0%})",
        f"cost per 1k items, attributed by the router: jobs ${figures['jobs_cost']:.4f}, one by one "
        f"${figures['realtime_cost']:.4f} (jobs cost {figures['jobs_cost'] / figures['realtime_cost']:.0%})",
    ]
    if args.provider_jobs:
        print(f"provider lane: {args.provider_jobs} chat jobs against the stand-in ...", flush=True)
        lines += asyncio.run(measure_provider(args.provider_jobs))
    print("\n".join(lines))
    OUT.mkdir(exist_ok=True)
    (OUT / "jobs.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
