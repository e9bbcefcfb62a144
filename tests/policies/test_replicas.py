"""Many replicas, one controller, in the pure core: measurements add up, and a controller carries on from a record."""

from __future__ import annotations

import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.control.replicas import ClusterMerge, published
from policies.control.switching import SwitchingController
from tests.policies.helpers import MODES, feed, make_monitor, quick_params
from tests.policies.scenario import Scenario, kinds


def wire(record: dict) -> dict:
    """Through JSON and back, as Redis carries it."""
    return json.loads(json.dumps(record))


def test_three_replicas_publications_add_up_to_what_one_monitor_of_all_their_traffic_would_see():
    replicas = [make_monitor() for _ in range(3)]
    everything = make_monitor()
    cluster = make_monitor()
    merge = ClusterMerge(cluster)
    for r, monitor in enumerate(replicas):
        merge.absorb(f"r{r}", wire(published(monitor)), 0.0)  # baselines
    rng = random.Random(4)
    for second in range(5):
        for r, monitor in enumerate(replicas):
            latency = rng.choice([0.01, 0.05, 0.3])
            for target in (monitor, everything):
                feed(target, "realtime", second, second + 1, 20 + 10 * r, latency, error_every=7)
                target.served(second + 0.5, "switchable", "batch", latency * 3, ok=r != 1)
            merge.absorb(f"r{r}", wire(published(monitor)), second + 1.0)
    merge.set_gauges({f"r{r}": wire(published(m)) for r, m in enumerate(replicas)})
    got, want = cluster.lanes["realtime"].read(5.0), everything.lanes["realtime"].read(5.0)
    assert got.window == want.window and got.window.completions == 5 * (20 + 30 + 40)
    assert got.window.latency.quantiles((0.5, 0.99)) == want.window.latency.quantiles((0.5, 0.99))
    outcomes = cluster.outcomes[("switchable", "batch")].read(5.0).window
    assert outcomes == everything.outcomes[("switchable", "batch")].read(5.0).window and outcomes.errors == 5


def test_a_first_publication_and_a_restarted_replicas_set_a_baseline_and_replay_no_history():
    replica, cluster = make_monitor(), make_monitor()
    merge = ClusterMerge(cluster)
    feed(replica, "batch", 0.0, 10.0, 10, 0.1)  # before the leader looked
    merge.absorb("r", wire(published(replica)), 10.0)
    assert cluster.lanes["batch"].read(10.0).window.completions == 0
    feed(replica, "batch", 10.0, 11.0, 10, 0.1)
    merge.absorb("r", wire(published(replica)), 11.0)
    assert cluster.lanes["batch"].read(11.0).window.completions == 10
    restarted = make_monitor(now_s=11.0)
    feed(restarted, "batch", 11.0, 11.5, 10, 0.1)
    merge.absorb("r", wire(published(restarted)), 12.0)  # its totals went down: a new baseline
    feed(restarted, "batch", 11.5, 12.0, 10, 0.1)
    merge.absorb("r", wire(published(restarted)), 12.5)
    assert cluster.lanes["batch"].read(12.5).window.completions == 15


def test_a_controller_restored_from_a_record_carries_a_transition_on_from_its_step():
    s = Scenario(quick_params(hold_s=0.0, step_s=5.0, cooldown_s=20.0))
    s.run(8, "batch")  # started, promoted once: on step 1 (50/50)
    record = wire(s.controller.record())
    successor = SwitchingController(MODES, "realtime", quick_params(hold_s=0.0, step_s=5.0, cooldown_s=20.0))
    successor.restore(record, s.snapshot())
    assert successor.view().transition.step_index == s.controller.view().transition.step_index == 1
    assert successor.weights == s.controller.weights and successor.view().state == "ramping"
    s.controller = successor  # the scenario's traffic now follows the successor
    rest = s.run(30, "batch")
    assert kinds(rest).count("StepAdvanced") == 2 and kinds(rest).count("TransitionCompleted") == 1
    assert s.controller.mode == "batch" and s.controller.weights == MODES["batch"]
    rollback = SwitchingController(MODES, "realtime", quick_params())
    rollback.restore(wire(s.controller.record()), s.snapshot())
    assert rollback.view().cooldown_until_s == s.controller.view().cooldown_until_s


@settings(max_examples=50)
@given(st.lists(st.tuples(st.integers(0, 2), st.floats(0.0005, 30.0), st.booleans(), st.integers(0, 3)), max_size=60))
def test_however_requests_fall_over_replicas_and_ticks_the_leader_sees_what_one_router_would(requests):
    """Any split of any requests over three replicas, published at any ticks, adds up to one monitor's figures."""
    replicas, everything, cluster = [make_monitor() for _ in range(3)], make_monitor(), make_monitor()
    merge = ClusterMerge(cluster)
    for r, monitor in enumerate(replicas):
        merge.absorb(f"r{r}", wire(published(monitor)), 0.0)
    now = 0.0
    for replica, latency, ok, publish_after in requests:
        now += 0.01
        for monitor in (replicas[replica], everything):
            monitor.lanes["realtime"].arrived(now)
            monitor.lanes["realtime"].completed(now, latency, ok=ok)
            monitor.served(now, "pinned", "realtime", latency, ok)
        if publish_after == 0:  # this replica publishes now; the others publish later, or at the end
            merge.absorb(f"r{replica}", wire(published(replicas[replica])), now)
    now += 0.01
    for r, monitor in enumerate(replicas):
        merge.absorb(f"r{r}", wire(published(monitor)), now)
    assert cluster.lanes["realtime"].since_start == everything.lanes["realtime"].since_start
    assert (
        cluster.outcomes[("pinned", "realtime")].since_start == everything.outcomes[("pinned", "realtime")].since_start
    )
