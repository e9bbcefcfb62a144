"""The claims rule (policies.path.access): a grant keeps what it allows, drops the rest, and never adds a claim."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from policies.control.objectives import ObjectiveParams, Objectives
from policies.path.access import ANY, CLASS, DEADLINE, LANE, NO_CLAIMS, TIER, Claims, Grant, GrantParams, screen

OBJECTIVES = Objectives({"urgent": ObjectiveParams(priority=0), "bulk": ObjectiveParams(priority=5)})
CLASSES = ["pinned", "switchable", "jobs", "urgent", "bulk"]
LANES = ["realtime", "batch"]

claims = st.builds(
    Claims,
    st.none() | st.sampled_from(LANES),
    st.none() | st.sampled_from(CLASSES),
    st.none() | st.floats(0.001, 10),
    st.booleans(),
)
grants = st.builds(
    GrantParams,
    classes=st.lists(st.sampled_from([*CLASSES, ANY]), max_size=3).map(tuple),
    lanes=st.lists(st.sampled_from([*LANES, ANY]), max_size=2).map(tuple),
    tiers=st.lists(st.sampled_from(["priority", ANY]), max_size=1).map(tuple),
    deadline=st.booleans(),
)


@given(claims, grants)
def test_every_claim_is_either_kept_as_it_was_or_dropped_and_named(asked, params):
    kept, denied = screen(asked, Grant.of(params), OBJECTIVES)
    for kind, was, now in [
        (LANE, asked.lane, kept.lane),
        (CLASS, asked.traffic_class, kept.traffic_class),
        (DEADLINE, asked.deadline_s, kept.deadline_s),
        (TIER, asked.priority_tier or None, kept.priority_tier or None),
    ]:
        assert now in (was, None)
        assert (kind in denied) == (was is not None and now is None)


@given(claims)
def test_nothing_granted_keeps_only_what_asks_for_no_precedence(asked):
    kept, _ = screen(asked, Grant.of(GrantParams()), OBJECTIVES)
    assert kept.lane is None and kept.deadline_s is None and not kept.priority_tier
    assert kept.traffic_class in (None, "switchable", "jobs", "bulk")


def test_a_credentials_grant_adds_to_everyones():
    grant = Grant.of(GrantParams(classes=("urgent",)), GrantParams(lanes=("realtime",), deadline=True))
    asked = Claims("realtime", "urgent", 0.5, True)
    assert screen(asked, grant, OBJECTIVES) == (Claims("realtime", "urgent", 0.5, False), (TIER,))
    assert screen(NO_CLAIMS, grant, OBJECTIVES) == (NO_CLAIMS, ())
