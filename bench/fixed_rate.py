"""Open-loop load at a fixed rate; prints the latency percentiles as JSON.

    python bench/fixed_rate.py URL RATE_PER_S DURATION_S

Requests start on a fixed schedule whether or not earlier ones have
finished (so a slow target cannot slow the load down and hide its own
latency: no coordinated omission). Latency is measured from each request's
scheduled start to the end of its body.
"""

import asyncio
import json
import sys
import time

import aiohttp
import numpy as np


async def run(url: str, rate: float, duration_s: float) -> dict:
    n = int(rate * duration_s)
    latencies = np.full(n, np.nan)
    failures = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        # Warm the connection pool so connects are not measured.
        await asyncio.gather(*(session.get(url) for _ in range(16)), return_exceptions=True)
        start = time.perf_counter()

        async def one(i: int) -> None:
            nonlocal failures
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                async with session.post(url, data=b'{"input": "hello"}') as response:
                    await response.read()
                    if response.status != 200:
                        failures += 1
            except aiohttp.ClientError:
                failures += 1
                return
            latencies[i] = time.perf_counter() - scheduled

        await asyncio.gather(*(one(i) for i in range(n)))
    done = latencies[~np.isnan(latencies)]
    return {
        "requests": n,
        "failures": failures,
        "p50_ms": float(np.percentile(done, 50) * 1000),
        "p99_ms": float(np.percentile(done, 99) * 1000),
    }


if __name__ == "__main__":
    url, rate, duration = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    try:
        import uvloop

        result = uvloop.run(run(url, rate, duration))
    except ImportError:
        result = asyncio.run(run(url, rate, duration))
    print(json.dumps(result))
