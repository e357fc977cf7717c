"""Classifier-free guidance as a wrapper around a velocity callable (Ho & Salimans 2022).

    v = v_uncond + scale (v_cond - v_uncond)

"Unconditional" is whatever the second branch is conditioned on: the empty prompt, or a
negative prompt. Two forms, both returning a plain `velocity(x, t)` for any sampler:

- `guided_batched(velocity_pair, scale)`: one network call on x and t doubled along the batch
  axis (first half conditional, second half unconditional). The efficient form: the caller
  builds `velocity_pair` once with its text conditioning (and attention masks) doubled to
  match, e.g. `lambda x2, t2: dit(x2, coords2, t2, text_cond_then_uncond, mask2)`.
- `guided(velocity_cond, velocity_uncond, scale)`: two calls, for when a doubled batch does
  not fit in memory.

`scale` may be a float or a per-token tensor shaped like t (e.g. `packed.per_token(scales)`
for one scale per sample). `interval=(lo, hi)` applies guidance only to tokens with t in
[lo, hi] and uses the conditional velocity elsewhere (Kynkäänniemi et al. 2024).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kinetoscope.diffusion.flow import expand_time
from kinetoscope.diffusion.samplers import Velocity


def combine(
    v_cond: Tensor,
    v_uncond: Tensor,
    scale: Tensor | float,
    t: Tensor | None = None,
    interval: tuple[float, float] | None = None,
) -> Tensor:
    """v_uncond + scale (v_cond - v_uncond), Ho & Salimans 2022; per-token scale and interval."""
    s = expand_time(scale, v_cond) if isinstance(scale, Tensor) and scale.ndim else scale
    out = v_uncond + s * (v_cond - v_uncond)
    if interval is None:
        return out
    if t is None:
        raise ValueError("a guidance interval needs the timesteps t")
    lo, hi = interval
    inside = (t >= lo) & (t <= hi)  # (...,) tokens that get guidance
    return torch.where(inside[..., None], out, v_cond)


def _check_interval(interval: tuple[float, float] | None) -> None:
    if interval is not None and not 0 <= interval[0] <= interval[1] <= 1:
        raise ValueError(f"guidance interval must be (lo, hi) with 0 <= lo <= hi <= 1: {interval}")


def guided(
    velocity_cond: Velocity,
    velocity_uncond: Velocity,
    scale: Tensor | float,
    interval: tuple[float, float] | None = None,
) -> Velocity:
    """Classifier-free guidance from two velocity callables (two calls per evaluation).

    The unconditional call is skipped where it cannot matter: scale 1 (a float), or no token
    inside the guidance interval.
    """
    _check_interval(interval)

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        v_cond = velocity_cond(x, t)
        if isinstance(scale, float | int) and scale == 1:
            return v_cond
        if interval is not None and not bool(((t >= interval[0]) & (t <= interval[1])).any()):
            return v_cond
        return combine(v_cond, velocity_uncond(x, t), scale, t, interval)

    return velocity


def guided_batched(
    velocity_pair: Velocity,
    scale: Tensor | float,
    interval: tuple[float, float] | None = None,
    dim: int = 0,
) -> Velocity:
    """Classifier-free guidance in one call: `velocity_pair` sees x and t doubled along `dim`.

    The first half of the doubled batch is the conditional branch, the second the
    unconditional (or negative-prompt) one; `dim` is the batch (sequence) axis of x.
    """
    _check_interval(interval)

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        if not -t.ndim <= dim < t.ndim:
            raise ValueError(f"dim {dim} is not a batch axis of the timesteps {tuple(t.shape)}")
        v_cond, v_uncond = velocity_pair(torch.cat([x, x], dim), torch.cat([t, t], dim)).chunk(
            2, dim
        )
        return combine(v_cond, v_uncond, scale, t, interval)

    return velocity
