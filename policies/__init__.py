"""The control core of modeshift: pure, sans-I/O, shared by router and simulator.

Nothing in this package reads a clock, opens a socket, or imports asyncio or
aiohttp. Every call takes the time as `now_s`; randomness comes from an
injected `random.Random`. The live router and the offline simulator drive
the same objects, so a policy behaves the same in both.

- units: durations and sizes in configuration values
- histogram: mergeable log-bucket latency histograms
- metrics: per-lane cumulative totals and sliding windows
- pricing: the cost model of a lane
- snapshot, monitor: the frozen view policies read, and what builds it
- weights: the traffic split as a value
- protocol, registry: what a policy is, and finding one by name
- load, cost, latency, adaptive, slo, static, composite: the built-in policies
- queueing: M/G/c latency predictions (Erlang C), for the slo policy
- objectives: what each traffic class was promised, as values
- stream_health: the stream's attainment against its objectives, per class and lane
- actions, switching, switching_table, switching_params: the controller's outputs,
  rules, state table and parameters
- control: the loop that ties monitor, policy and controller together
- flush, batching: micro-batch flush rules and the bounded batch queue
- lane_choice: which lane one request goes to (pins, deadlines, weights)
- admission: a lane's gate (slots, priority queue with aging) and where a request may wait
"""

from policies.actions import (
    Action,
    CommandRejected,
    Force,
    Pause,
    Paused,
    ProposalIgnored,
    Resume,
    Resumed,
    Rollback,
    RolledBack,
    SetWeights,
    StepAdvanced,
    TransitionCompleted,
    TransitionStarted,
)
from policies.batching import Batcher, BatchItem, Taken
from policies.control import ControlLoop
from policies.flush import AdaptiveRule, BatchingParams, HybridRule, SizeRule, TimeRule
from policies.histogram import Histogram
from policies.metrics import LaneTotals, LaneWindow
from policies.monitor import Monitor
from policies.pricing import CostModel
from policies.protocol import BasePolicy, LaneName, ModeName, Policy, PolicyParams, Proposal
from policies.registry import PolicySpec, known_policies, register, resolve
from policies.snapshot import ControlView, LaneFigures, Snapshot, TransitionView
from policies.switching import State, SwitchingController
from policies.switching_params import SwitchingParams
from policies.units import ByteSize, Duration
from policies.weights import Weights

__all__ = [
    "Action",
    "AdaptiveRule",
    "BasePolicy",
    "BatchItem",
    "Batcher",
    "BatchingParams",
    "ByteSize",
    "CommandRejected",
    "ControlLoop",
    "ControlView",
    "CostModel",
    "Duration",
    "Force",
    "Histogram",
    "HybridRule",
    "LaneFigures",
    "LaneName",
    "LaneTotals",
    "LaneWindow",
    "ModeName",
    "Monitor",
    "Pause",
    "Paused",
    "Policy",
    "PolicyParams",
    "PolicySpec",
    "Proposal",
    "ProposalIgnored",
    "Resume",
    "Resumed",
    "Rollback",
    "RolledBack",
    "SetWeights",
    "SizeRule",
    "Snapshot",
    "State",
    "StepAdvanced",
    "SwitchingController",
    "SwitchingParams",
    "Taken",
    "TimeRule",
    "TransitionCompleted",
    "TransitionStarted",
    "TransitionView",
    "Weights",
    "known_policies",
    "register",
    "resolve",
]
