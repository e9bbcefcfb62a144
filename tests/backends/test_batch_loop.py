"""The batch loop carries out the Batcher's decisions on asyncio's clock."""

from __future__ import annotations

import asyncio

from backends.batch_loop import BatchLoop
from policies.path.batching import Batcher, BatchItem
from policies.path.flush import HybridRule, SizeRule
from tests.router.helpers import SchedulingClock


class Recorder:
    def __init__(self, hold: asyncio.Event | None = None):
        self.batches: list[list[int]] = []
        self.hold = hold
        self.running = 0
        self.most_running = 0

    async def __call__(self, batch: list[BatchItem], waited: list[float]) -> None:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.hold is not None:
                await self.hold.wait()
            self.batches.append([item.payload for item in batch])
        finally:
            self.running -= 1


async def settle(condition, limit_s: float = 2.0) -> None:
    async with asyncio.timeout(limit_s):
        while not condition():
            await asyncio.sleep(0.001)


async def caught_up() -> None:
    """Until the event loop has run what is ready now (the batch loop's task, its callbacks): no time passes."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_full_batch_goes_at_once_and_the_rest_after_max_wait():
    run = Recorder()
    loop = BatchLoop(Batcher(HybridRule(max_batch=4, max_wait_s=0.05).build()), run)
    for i in range(6):
        assert loop.offer(BatchItem(payload=i))
    await settle(lambda: len(run.batches) == 1)
    assert run.batches == [[0, 1, 2, 3]]
    await settle(lambda: len(run.batches) == 2)
    assert run.batches[1] == [4, 5]
    await loop.close()


async def test_a_size_rule_waits_for_its_batch():
    run = Recorder()
    loop = BatchLoop(Batcher(SizeRule(max_batch=3).build()), run)
    loop.offer(BatchItem(payload="a"))
    loop.offer(BatchItem(payload="b"))
    await caught_up()
    assert run.batches == []  # a size rule has no timer: two of three wait however long
    loop.offer(BatchItem(payload="c"))
    await settle(lambda: run.batches == [["a", "b", "c"]])
    await loop.close()


async def test_while_every_slot_runs_the_queue_fills_the_next_batch():
    hold = asyncio.Event()
    run = Recorder(hold)
    loop = BatchLoop(Batcher(HybridRule(max_batch=100, max_wait_s=0.0).build()), run, concurrency=1)
    loop.offer(BatchItem(payload=0))
    await settle(lambda: run.running == 1)
    for i in range(1, 10):
        loop.offer(BatchItem(payload=i))
    await caught_up()
    assert run.running == 1  # the second batch waits for the slot
    hold.set()
    await settle(lambda: len(run.batches) == 2)
    assert run.batches == [[0], list(range(1, 10))]
    assert run.most_running == 1
    await loop.close()


async def test_concurrency_lets_batches_overlap():
    hold = asyncio.Event()
    run = Recorder(hold)
    loop = BatchLoop(Batcher(HybridRule(max_batch=1, max_wait_s=0.0).build()), run, concurrency=3)
    for i in range(5):
        loop.offer(BatchItem(payload=i))
    await settle(lambda: run.running == 3)
    hold.set()
    await settle(lambda: len(run.batches) == 5)
    assert run.most_running == 3
    await loop.close()


async def test_items_past_their_deadline_are_answered_as_expired():
    hold = asyncio.Event()
    run = Recorder(hold)
    expired: list[str] = []
    clock = SchedulingClock(0.0)
    loop = BatchLoop(
        Batcher(HybridRule(max_batch=1, max_wait_s=0.0).build()),
        run,
        on_expired=lambda items: expired.extend(item.payload for item in items),
        clock=clock,
        call_at=clock.call_at,
    )
    loop.offer(BatchItem(payload="first"))
    await settle(lambda: run.running == 1)
    loop.offer(BatchItem(payload="late", deadline_s=clock.now + 0.01))
    clock.advance_firing(0.05)  # past its deadline while the only slot is busy
    hold.set()
    await settle(lambda: expired == ["late"])
    await caught_up()
    assert run.batches == [["first"]]
    await loop.close()


async def test_a_full_queue_refuses_and_close_returns_what_waited():
    hold = asyncio.Event()
    run = Recorder(hold)
    loop = BatchLoop(Batcher(SizeRule(max_batch=10).build(), capacity=2), run)
    assert loop.offer(BatchItem(payload=1)) and loop.offer(BatchItem(payload=2))
    assert not loop.offer(BatchItem(payload=3))
    left = await loop.close()
    assert [item.payload for item in left] == [1, 2]


async def test_a_failing_batch_does_not_stop_the_loop():
    batches: list[list[int]] = []

    async def run(batch, waited):
        if batch[0].payload == 0:
            raise RuntimeError("boom")
        batches.append([item.payload for item in batch])

    loop = BatchLoop(Batcher(HybridRule(max_batch=1, max_wait_s=0.0).build()), run)
    loop.offer(BatchItem(payload=0))
    loop.offer(BatchItem(payload=1))
    await settle(lambda: batches == [[1]])
    await loop.close()


async def test_items_arriving_as_the_wait_ends_never_stall_the_loop():
    """Offers that land just as the max_wait timer fires: every item is still served."""
    served = 0

    async def run(batch, waited):
        nonlocal served
        await asyncio.sleep(0)
        served += len(batch)

    loop = BatchLoop(Batcher(HybridRule(max_batch=64, max_wait_s=0.0005).build(), capacity=10_000), run)
    offered = 0
    for round_ in range(300):
        for _ in range(1 + round_ % 3):
            loop.offer(BatchItem(payload=offered))
            offered += 1
        await asyncio.sleep(0.0005 * (round_ % 4))
    await settle(lambda: served == offered, limit_s=10)
    await loop.close()
