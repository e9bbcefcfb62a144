"""The `switching:` section: the parameters of the switching controller.

What each one means is explained in policies.control.switching, which runs them;
the defaults follow the cost guide (steps 0.2 / 0.5 / 0.8 / 1.0) and canary
practice (no promotion without `min_samples` of evidence). Health is judged
by the traffic's objectives (the `objectives:` section), so no threshold
here compares a latency with a number.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from policies.units import Duration, Timer


class SwitchingParams(BaseModel):
    """The `switching:` section of the config."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    tick_s: Timer = Field(1.0, alias="tick", description="how often the control loop runs")
    hold_s: Duration = Field(60.0, alias="hold", description="how long a proposal must persist (switch delay)")
    cooldown_s: Duration = Field(120.0, alias="cooldown", description="quiet time after a completion or rollback")
    steps: tuple[float, ...] = Field(
        (0.2, 0.5, 0.8, 1.0), min_length=1, description="fractions of the way to the target, ending at 1.0"
    )
    step_s: Duration = Field(30.0, alias="step", description="minimum time on each step")
    min_samples: int = Field(50, ge=1, description="requests a gaining lane must serve in a step to be judged")
    urgency: Literal["skip", "jump", "off"] = Field(
        "skip",
        description="when the lane losing traffic misses its objectives: a step per tick, the target at once, or wait",
    )
    progress_deadline_s: Duration = Field(
        300.0, alias="progress_deadline", description="a step not promoted within this rolls back"
    )

    @field_validator("steps")
    @classmethod
    def _steps_increase_to_one(cls, steps: tuple[float, ...]) -> tuple[float, ...]:
        problems = []
        for i, step in enumerate(steps):
            if not 0.0 < step <= 1.0:
                problems.append((i, step, "each step must be in (0, 1]"))
            elif i and step <= steps[i - 1]:
                problems.append((i, step, f"steps must increase; the one before is {steps[i - 1]:g}"))
        if not problems and steps[-1] != 1.0:
            problems.append((len(steps) - 1, steps[-1], "the last step must be 1.0 (the target mode itself)"))
        if problems:
            raise ValidationError.from_exception_data(
                "steps",
                [
                    InitErrorDetails(type=PydanticCustomError("step", message), loc=(i,), input=step)
                    for i, step, message in problems
                ],
            )
        return steps

    @model_validator(mode="after")
    def _deadline_after_step(self) -> SwitchingParams:
        if self.progress_deadline_s <= self.step_s:
            raise ValueError(
                f"progress_deadline ({self.progress_deadline_s:g}s) must be longer than step ({self.step_s:g}s)"
            )
        return self
