"""The control core of modeshift: pure, sans-I/O, shared by router and simulator.

Nothing in this package reads a clock, opens a socket, or imports asyncio or
aiohttp. Every call takes the time as `now_s`; randomness comes from an
injected `random.Random`. The live router and the offline simulator drive
the same objects, so a policy behaves the same in both.

Three rooms, and what they share:

- control/ (policies.control): measurement, the snapshot, objectives, the switching controller, the
  capacity rule and the control loop: what is decided each tick
- path/ (policies.path): the rules of one request's path: claims, lane choice, admission, the upstream
  pool, retries, batching
- builtin/ (policies.builtin): the built-in policies
- shared here: units (durations and sizes in configuration values), histogram (mergeable log-bucket
  latency histograms), queueing (M/G/c predictions), pricing (the cost model of a lane), and registry
  (finding a policy by name)

Imports run one way: builtin and path read control; control reads neither. This package re-exports
what a policy written elsewhere needs.
"""

from policies.control.actions import (
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
from policies.control.loop import ControlLoop
from policies.control.metrics import LaneTotals, LaneWindow
from policies.control.monitor import Monitor
from policies.control.protocol import BasePolicy, LaneName, ModeName, Policy, PolicyParams, Proposal
from policies.control.snapshot import ControlView, LaneFigures, Snapshot, TransitionView
from policies.control.switching import State, SwitchingController
from policies.control.switching_params import SwitchingParams
from policies.control.weights import Weights
from policies.histogram import Histogram
from policies.path.batching import Batcher, BatchItem, Taken
from policies.path.flush import AdaptiveRule, BatchingParams, HybridRule, SizeRule, TimeRule
from policies.pricing import CostModel
from policies.registry import PolicySpec, known_policies, register, resolve
from policies.units import ByteSize, Duration

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
