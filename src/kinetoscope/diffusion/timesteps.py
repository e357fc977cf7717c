"""Timesteps: the logit-normal training density, the shift, and sampling schedules.

Training draws t from a logit-normal density, which puts most samples in the middle of the
path where the velocity is hardest to predict (Esser et al. 2024, SD3). Larger images and
longer videos carry more redundant tokens and stay recognisable at higher noise, so both the
training density and the sampling schedule are shifted towards noise by a factor that grows
with the token count:

    t' = s t / (1 + (s - 1) t)                                       (SD3, Esser et al. 2024)
    mu = base_shift + (max_shift - base_shift) * r(L),  s = exp(mu)   (Flux's calculate_shift)

where r(L) goes from 0 at `base_tokens` to 1 at `max_tokens`. Flux takes r linear in L; we take
it linear in log L by default. At the anchors the two agree (Flux's constants: s = 1.65 at 256
tokens, 3.16 at 4096), but linear-in-L extrapolates to s = 5.7e5 for the ~75k tokens of a
720p video and barely moves below 256 tokens (s = 1.58 for a single token), while log L keeps
SD3's power-law form (s ~ L^0.23 here; SD3's own rule is sqrt): s = 0.86 at 16 tokens, 1.19 at
64, 6.3 at 75k. That is near 1 where small models train on a CPU, less noise for tiny
sequences (whose few tokens are destroyed sooner), and in the range video models use at scale.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

BASE_TOKENS = 256  # Flux's anchor sequence lengths and shifts, kept so the anchors agree
MAX_TOKENS = 4096
BASE_SHIFT = 0.5
MAX_SHIFT = 1.15


def logit_normal(
    shape: int | tuple[int, ...],
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """t = sigmoid(u), u ~ N(mean, std^2): the logit-normal density, Esser et al. 2024 (SD3)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    u = torch.randn(shape, generator=generator, device=device)
    return torch.sigmoid(mean + std * u)


def logit_normal_pdf(t: Tensor, mean: float = 0.0, std: float = 1.0) -> Tensor:
    """Density of the logit-normal on (0, 1), Esser et al. 2024 eq. 19."""
    logit = torch.log(t / (1 - t))
    return torch.exp(-((logit - mean) ** 2) / (2 * std**2)) / (
        std * math.sqrt(2 * math.pi) * t * (1 - t)
    )


def shift_timesteps(t: Tensor | float, shift: Tensor | float) -> Tensor:
    """t' = s t / (1 + (s - 1) t): the resolution shift of SD3, Esser et al. 2024 eq. 23.

    s > 1 moves every t towards noise (t = 0 and t = 1 stay fixed); s = 1 is the identity.
    `shift` broadcasts against `t` (e.g. one shift per token).
    """
    t = torch.as_tensor(t, dtype=torch.float32)
    shift = torch.as_tensor(shift, dtype=t.dtype, device=t.device)
    return shift * t / (1 + (shift - 1) * t)


def token_shift(
    num_tokens: Tensor | int | float,
    base_tokens: float = BASE_TOKENS,
    max_tokens: float = MAX_TOKENS,
    base_shift: float = BASE_SHIFT,
    max_shift: float = MAX_SHIFT,
    interpolation: Literal["log", "linear"] = "log",
) -> Tensor:
    """Shift s = exp(mu) for a sequence of `num_tokens` tokens; see the module docstring.

    mu interpolates from base_shift at base_tokens to max_shift at max_tokens, linearly in
    log L ("log") or in L ("linear", Flux's `calculate_shift` exactly), and extrapolates beyond.
    """
    length = torch.as_tensor(num_tokens, dtype=torch.float64)
    if (length <= 0).any():
        raise ValueError("token counts must be positive")
    if interpolation == "log":
        r = torch.log(length / base_tokens) / math.log(max_tokens / base_tokens)
    elif interpolation == "linear":
        r = (length - base_tokens) / (max_tokens - base_tokens)
    else:
        raise ValueError(f"interpolation must be 'log' or 'linear', got {interpolation!r}")
    mu = base_shift + (max_shift - base_shift) * r
    return torch.exp(mu).float()


def training_timesteps(
    token_counts: Tensor | list[int],
    mean: float = 0.0,
    std: float = 1.0,
    shift: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One training t per sample (num_samples,): logit-normal, shifted by its token count.

    With `shift`, t' = shift_timesteps(t, token_shift(L_i)) (Esser et al. 2024), the same
    shift `timestep_schedule` uses at sampling time, so training and sampling see one density.
    """
    counts = torch.as_tensor(token_counts)
    t = logit_normal(len(counts), mean, std, generator=generator)
    return shift_timesteps(t, token_shift(counts)) if shift else t


def timestep_schedule(steps: int, shift: Tensor | float = 1.0) -> Tensor:
    """Sampling schedule (steps + 1, ...) from t = 1 to t = 0: uniform, then shifted.

    Uniform in t then `shift_timesteps`, as Flux and SD3 sample; `shift` may be a tensor (e.g.
    per token (N, L), from `token_shift` of each sample's length), which gives a schedule of
    shape (steps + 1, N, L) so differently-sized samples in one packed batch each follow
    their own. The first `steps` values equal diffusers' `FlowMatchEulerDiscreteScheduler`
    sigmas for `set_timesteps(sigmas=linspace(1, 1/steps, steps))`, and it ends at 0.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    shift = torch.as_tensor(shift, dtype=torch.float32)
    uniform = torch.linspace(1.0, 0.0, steps + 1, device=shift.device)
    return shift_timesteps(uniform.view(-1, *([1] * shift.ndim)), shift[None])
