"""Samplers of the rectified-flow ODE dx/dt = v(x, t), from t = 1 (noise) to t = 0 (data).

Samplers are pure functions: they never see the network, only a `velocity(x, t) -> v`
callable over packed tokens x (..., D) with one timestep per token t (...,) (k-diffusion's
design). A schedule is (steps + 1,) or per token (steps + 1, ...); see `timestep_schedule`.
Given tokens (clean conditioning frames) are fed to the velocity at t = 0 and are never
moved. Gradients are the caller's choice (wrap a call in `torch.inference_mode()` to
generate). A callback sees every step; `start` and `end` run a slice of the schedule, so a
stopped run resumes exactly and SDEdit-style editing starts part-way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from kinetoscope.diffusion.flow import denoised, expand_time

Velocity = Callable[[Tensor, Tensor], Tensor]


@dataclass
class SamplerStep:
    """What a callback sees after step `index` (from t to t_next)."""

    index: int
    t: Tensor  # (...,) per-token timestep at the start of the step (0 on given tokens)
    t_next: Tensor  # (...,) per-token timestep at its end
    x: Tensor  # (..., D) tokens after the step
    velocity: Tensor  # (..., D) velocity the step moved along
    denoised: Tensor  # (..., D) x0 predicted at the start of the step: x_t - t v


Callback = Callable[[SamplerStep], None]


def _step_times(schedule: Tensor, i: int, x: Tensor, given: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per-token (t, t_next) of step i, with given tokens held at t = 0."""
    token_shape = x.shape[:-1]
    t = schedule[i].to(x.device, x.dtype).expand(token_shape)
    t_next = schedule[i + 1].to(x.device, x.dtype).expand(token_shape)
    if given is not None:
        t, t_next = t.masked_fill(given, 0.0), t_next.masked_fill(given, 0.0)
    return t, t_next


def _check(x: Tensor, schedule: Tensor, given: Tensor | None, start: int, end: int | None) -> int:
    if x.ndim < 1:
        raise ValueError("x must be tokens (..., D)")
    if schedule.ndim < 1 or len(schedule) < 2:
        raise ValueError(f"schedule must be (steps + 1, ...) with steps >= 1, got {schedule.shape}")
    if schedule.ndim > 1 and schedule.shape[1:] != x.shape[:-1]:
        raise ValueError(
            f"a per-token schedule {tuple(schedule.shape)} must be (steps + 1, "
            f"{', '.join(map(str, x.shape[:-1]))}) for x of shape {tuple(x.shape)}"
        )
    if given is not None and given.shape != x.shape[:-1]:
        raise ValueError(f"given mask {tuple(given.shape)} must be x's token shape {x.shape[:-1]}")
    steps = len(schedule) - 1
    end = steps if end is None else end
    if not 0 <= start <= end <= steps:
        raise ValueError(f"need 0 <= start ({start}) <= end ({end}) <= steps ({steps})")
    return end


def _hold(x_new: Tensor, x: Tensor, given: Tensor | None) -> Tensor:
    """Keep given tokens bit-for-bit equal to their clean values."""
    return x_new if given is None else torch.where(given[..., None], x, x_new)


def sample_euler(
    velocity: Velocity,
    x: Tensor,
    schedule: Tensor,
    given: Tensor | None = None,
    callback: Callback | None = None,
    start: int = 0,
    end: int | None = None,
) -> Tensor:
    """Euler steps x <- x + (t_next - t) v(x, t) of the rectified-flow ODE, Liu et al. 2022.

    x (..., D) starts at schedule[start] (noise for start = 0); returns x at schedule[end].
    One velocity call per step.
    """
    end = _check(x, schedule, given, start, end)
    for i in range(start, end):
        t, t_next = _step_times(schedule, i, x, given)
        v = velocity(x, t)
        x_next = _hold(x + expand_time(t_next - t, x) * v, x, given)
        if callback is not None:
            callback(SamplerStep(i, t, t_next, x_next, v, denoised(x, v, t)))
        x = x_next
    return x


def sample_heun(
    velocity: Velocity,
    x: Tensor,
    schedule: Tensor,
    given: Tensor | None = None,
    callback: Callback | None = None,
    start: int = 0,
    end: int | None = None,
) -> Tensor:
    """Heun's second-order steps, Karras et al. 2022 Algorithm 1 (deterministic).

    Each step takes an Euler step, evaluates the velocity there and moves along the mean of the
    two velocities; a step whose end is t = 0 for every moving token stays a plain Euler step,
    as in Karras et al. Two velocity calls per step (one on such a final step).
    """
    end = _check(x, schedule, given, start, end)
    for i in range(start, end):
        t, t_next = _step_times(schedule, i, x, given)
        dt = expand_time(t_next - t, x)
        v = velocity(x, t)
        x_euler = _hold(x + dt * v, x, given)
        moving = t_next if given is None else t_next[~given]
        v_step = v
        if bool((moving != 0).any()):
            v_step = (v + velocity(x_euler, t_next)) / 2
        x_next = _hold(x + dt * v_step, x, given)
        if callback is not None:
            callback(SamplerStep(i, t, t_next, x_next, v_step, denoised(x, v, t)))
        x = x_next
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {"euler": sample_euler, "heun": sample_heun}


def sample(
    velocity: Velocity,
    x: Tensor,
    schedule: Tensor,
    method: str = "euler",
    given: Tensor | None = None,
    callback: Callback | None = None,
    start: int = 0,
    end: int | None = None,
) -> Tensor:
    """Run the sampler named `method` (a key of SAMPLERS) over `schedule`."""
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[method](velocity, x, schedule, given, callback, start, end)
