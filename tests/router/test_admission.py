import asyncio

import pytest

from router.admission import LaneFull, LaneGate, QueueTimedOut


async def test_slots_then_queue_then_full():
    gate = LaneGate(max_in_flight=1, queue_depth=1, queue_timeout_s=30)
    await gate.enter()
    waiter = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    assert gate.waiting == 1
    with pytest.raises(LaneFull):
        await gate.enter()
    gate.leave()  # the slot passes to the waiter
    await waiter
    assert gate.in_flight == 1 and gate.waiting == 0
    gate.leave()
    assert gate.idle


async def test_queue_is_first_come_first_served():
    gate = LaneGate(max_in_flight=1, queue_depth=10, queue_timeout_s=30)
    await gate.enter()
    order: list[int] = []

    async def wait(i: int) -> None:
        await gate.enter()
        order.append(i)

    tasks = [asyncio.create_task(wait(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert not gate.try_enter()  # a newcomer cannot overtake the queue
    for _ in range(3):
        gate.leave()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]


async def test_a_cancelled_waiter_leaves_the_queue():
    gate = LaneGate(max_in_flight=1, queue_depth=5, queue_timeout_s=30)
    await gate.enter()
    waiter = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.waiting == 0
    gate.leave()
    assert gate.idle


async def test_a_wait_past_queue_timeout_is_its_own_error():
    gate = LaneGate(max_in_flight=1, queue_depth=5, queue_timeout_s=0.01)
    await gate.enter()
    with pytest.raises(QueueTimedOut):
        await gate.enter()
    assert gate.waiting == 0 and gate.in_flight == 1


async def test_a_released_slot_goes_to_the_most_urgent_waiter():
    gate = LaneGate(max_in_flight=1, queue_depth=10, queue_timeout_s=30)
    await gate.enter()
    order: list[str] = []

    async def wait(name: str, priority: int) -> None:
        await gate.enter(priority)
        order.append(name)
        gate.leave()

    tasks = [asyncio.create_task(wait(name, p)) for name, p in (("shed", 2), ("switch", 1), ("pinned", 0))]
    await asyncio.sleep(0)
    assert gate.waiting == 3
    gate.leave()
    await asyncio.gather(*tasks)
    assert order == ["pinned", "switch", "shed"]
    assert gate.idle
