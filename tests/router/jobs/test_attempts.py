"""Every start of a job counts as an attempt, a start that a crash or a lost lease cut short included.

Issue 29 item 7: after a Postgres restart, jobs that had run twice showed
`attempts = 1`. Both stores, driven directly with times as numbers.
"""

from __future__ import annotations

from router.jobs.engines import open_database
from router.jobs.store import JobStore, NewJob


async def test_a_start_whose_lease_ran_out_counts_when_the_job_is_claimed_again(job_database):
    database = await open_database(job_database)
    try:
        store = JobStore(database)
        await store.submit(NewJob("POST", "/a", [], b"x", "alice", []), 1.0)
        (first,) = await store.claim(5, now=10.0, lease_s=5.0)
        assert first.attempts == 0
        # The worker dies with the job running; its lease runs out and another worker takes the job.
        (second,) = await store.claim(5, now=16.0, lease_s=5.0)
        assert second.id == first.id and second.attempts == 1
        assert await store.finish(second, 17.0, state="succeeded", status_code=200)
        assert not await store.finish(first, 17.5, state="succeeded", status_code=200)  # its lease is gone
        assert await store.claim(5, now=100.0, lease_s=5.0) == []  # finished: nothing left to claim
        job = await store.get(first.id, "alice")
        assert job is not None and job.attempts == 2 and job.state == "succeeded"
    finally:
        await database.close()
