from policies.path.upstream_pool import STARTING_RETRY_S, ReplicaWalk, UpstreamPool

URLS = ("http://a:1", "http://b:1", "http://c:1")


def test_least_in_flight_then_round_robin():
    pool = UpstreamPool(URLS)
    a, b, c = pool.upstreams
    a.in_flight, b.in_flight, c.in_flight = 3, 1, 2
    assert pool.pick(0.0) is b
    a.in_flight = b.in_flight = c.in_flight = 0
    assert {pool.pick(0.0).base for _ in range(3)} == {"http://a:1", "http://b:1", "http://c:1"}


def test_consecutive_errors_eject_and_a_success_resets_the_count():
    pool = UpstreamPool(URLS, consecutive_errors=3, base_ejection_s=30, max_ejected_fraction=0.5)
    a = pool.upstreams[0]
    pool.failed(a, 0.0)
    pool.failed(a, 0.0)
    pool.succeeded(a, 0.0)
    pool.failed(a, 0.0)
    pool.failed(a, 0.0)
    assert not a.ejected(0.0)
    assert pool.failed(a, 0.0)
    assert a.ejected(29.0) and not a.ejected(30.0)
    assert all(pool.pick(10.0) is not a for _ in range(6))


def test_ejection_grows_with_each_ejection():
    pool = UpstreamPool(URLS[:1], consecutive_errors=1, base_ejection_s=10)
    (a,) = pool.upstreams
    assert pool.failed(a, 0.0)
    assert a.ejected_until_s == 10.0
    assert pool.failed(a, 10.0)
    assert a.ejected_until_s == 30.0


def test_at_most_the_capped_share_is_ejected():
    pool = UpstreamPool(URLS, consecutive_errors=1, max_ejected_fraction=0.1)
    a, b, _ = pool.upstreams
    assert pool.failed(a, 0.0)  # at least one may always go
    assert not pool.failed(b, 0.0)
    assert not b.ejected(0.0)


def test_panic_when_everything_is_ejected():
    pool = UpstreamPool(URLS[:1], consecutive_errors=1)
    (a,) = pool.upstreams
    pool.failed(a, 0.0)
    assert not pool.available(1.0)
    assert pool.pick(1.0) is a
    assert pool.pick(1.0, exclude=(a,)) is None


def test_a_connect_failure_ejects_at_once_so_the_next_pick_goes_elsewhere():
    pool = UpstreamPool(URLS[:2], consecutive_errors=5)
    a, b = pool.upstreams
    assert pool.failed(a, 0.0, connect=True)
    assert a.ejected(1.0)
    assert all(pool.pick(1.0) is b for _ in range(5))  # a has nothing in flight, and still is not chosen


def test_back_from_an_ejection_an_upstream_gets_one_probe_at_a_time_and_a_failed_probe_ejects_again():
    pool = UpstreamPool(URLS[:2], consecutive_errors=5, base_ejection_s=10)
    a, b = pool.upstreams
    pool.failed(a, 0.0, connect=True)
    b.in_flight = 5  # least-in-flight alone would send everything to a
    probe = pool.pick(10.0)
    assert probe is a
    a.in_flight += 1
    assert all(pool.pick(10.0) is b for _ in range(5))  # one probe in flight: the rest go to b
    a.in_flight -= 1
    assert pool.failed(a, 10.5)  # a 5xx on the probe: out again at once, for longer
    assert a.ejected_until_s == 10.5 + 20
    pool.pick(30.5)
    pool.succeeded(a, 31.0)  # a probe that succeeds closes the circuit
    a.in_flight = 1
    assert pool.pick(31.0) is a


def test_an_upstream_that_joins_before_it_listens_is_tried_again_shortly_and_counts_no_ejection():
    pool = UpstreamPool(("a", "b"), base_ejection_s=30.0, max_ejected_fraction=0.5)
    pool.replace(["a", "b", "c"])  # c: an autoscaler's new replica, its model still loading
    c = pool.upstreams[2]
    assert c.starting
    assert pool.failed(c, 0.0, connect=True)  # refused: out for a moment
    assert c.ejected(0.5) and not c.ejected(STARTING_RETRY_S) and c.ejections == 0
    assert pool.failed(c, 1.0, connect=True) and not c.ejected(2.0)  # again: still no escalation
    assert pool.failed(pool.upstreams[0], 1.0, connect=True)  # a starting one is not in the ejected share
    pool.succeeded(c, 2.0)  # it answers: from now on an upstream like the others
    assert not c.starting
    assert pool.failed(c, 40.0, connect=True) and c.ejected(40.0 + 29.0) and c.ejections == 1  # a is back by then


def test_a_replica_walk_tries_each_replica_once_and_ejects_the_ones_that_refuse():
    pool = UpstreamPool(URLS, max_ejected_fraction=1.0)
    walk = ReplicaWalk(pool)
    seen = []
    while (upstream := walk.next(0.0)) is not None:
        seen.append(upstream.base)
        walk.refused(upstream, 0.0)
    assert sorted(seen) == sorted(URLS)  # each once, then nothing is left to try
    assert all(u.ejected(0.0) for u in pool.upstreams)  # a refused connection ejects at once
    assert ReplicaWalk(pool).next(0.0) is not None  # another call in panic still gets one (the pool's rule)
