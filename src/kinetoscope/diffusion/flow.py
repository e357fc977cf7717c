"""Rectified flow: the straight path from data to noise, its velocity, and the training loss.

Convention (the same as diffusers' flow-matching schedulers): t = 0 is data, t = 1 is noise,

    x_t = (1 - t) x0 + t noise,        v = dx_t/dt = noise - x0,

and sampling integrates dx/dt = v(x, t) from t = 1 down to t = 0. Tensors are packed tokens
`(..., L, D)` with a timestep per token `(..., L)`, so one batch holds samples at different
t, and tokens of given (clean, conditioning) frames sit at t = 0.
"""

from __future__ import annotations

import torch
from torch import Tensor


def expand_time(t: Tensor | float, x: Tensor) -> Tensor:
    """Broadcast t over x's trailing axes: t (...,) -> (..., 1, ..., 1) matching x.ndim."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim > x.ndim or x.shape[: t.ndim] != t.shape:
        raise ValueError(f"timesteps {tuple(t.shape)} must be a leading part of {tuple(x.shape)}")
    return t.reshape(*t.shape, *([1] * (x.ndim - t.ndim)))


def interpolate(x0: Tensor, noise: Tensor, t: Tensor | float) -> Tensor:
    """x_t = (1 - t) x0 + t noise: the rectified-flow path, Liu et al. 2022.

    Tokens at t = 0 (given tokens) come out exactly equal to x0.
    """
    tt = expand_time(t, x0)
    return (1 - tt) * x0 + tt * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """v = noise - x0: the constant velocity of the straight path, Liu et al. 2022."""
    return noise - x0


def denoised(x_t: Tensor, velocity: Tensor, t: Tensor | float) -> Tensor:
    """Predicted clean data x0 = x_t - t v (the path extrapolated to t = 0)."""
    return x_t - expand_time(t, x_t) * velocity


def token_timesteps(t: Tensor, sample_index: Tensor, given_mask: Tensor | None = None) -> Tensor:
    """Per-token timesteps (N, L) from per-sample t (num_samples,) and sample_index (N, L).

    Given tokens (clean conditioning) and padding (index -1) get t = 0.
    """
    out = t[sample_index.clamp(min=0)]  # (N, L)
    hold = sample_index < 0 if given_mask is None else (sample_index < 0) | given_mask
    return out.masked_fill(hold, 0.0)


def flow_loss(
    prediction: Tensor,
    target: Tensor,
    loss_mask: Tensor,
    given_mask: Tensor | None = None,
    weight: Tensor | None = None,
) -> Tensor:
    """Mean squared error over the tokens `loss_mask` keeps (never given ones), Liu et al. 2022.

    prediction, target (N, L, D); loss_mask, given_mask, weight (N, L). The mean is over kept
    tokens and channels, so every token counts the same; for a per-sample mean pass
    `weight = packed.per_token(1 / lengths)`. With no token kept the loss is a zero that still
    depends on `prediction` (every rank of a distributed step needs a graph).
    """
    if prediction.shape != target.shape or prediction.shape[:-1] != loss_mask.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)}, target {tuple(target.shape)} and loss_mask "
            f"{tuple(loss_mask.shape)} must be (N, L, D), (N, L, D) and (N, L)"
        )
    keep = loss_mask if given_mask is None else loss_mask & ~given_mask
    w = keep.float()  # (N, L); the loss is reduced in fp32 whatever the model's dtype
    if weight is not None:
        w = w * weight.float()
    per_token = (prediction.float() - target.float()).square().mean(dim=-1)  # (N, L)
    # Clamping the denominator (no host sync) makes "no token kept" a zero with a graph.
    return (per_token * w).sum() / w.sum().clamp(min=torch.finfo(torch.float32).tiny)
