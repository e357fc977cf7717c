"""Rectified flow: path and loss, timestep densities and shift, samplers, guidance.

A training step over a `PackedBatch` (kinetoscope.patches):

    t = training_timesteps(packed.lengths)                       # (num_samples,)
    t_tok = token_timesteps(t, packed.sample_index, packed.given_mask)  # (N, L), 0 if given
    noise = torch.randn_like(packed.tokens)
    x_t = interpolate(packed.tokens, noise, t_tok)               # given tokens stay clean
    loss = flow_loss(model(x_t, t_tok, ...), velocity_target(packed.tokens, noise),
                     packed.loss_mask, packed.given_mask)

Generation:

    shift = packed.per_token(token_shift(torch.tensor(packed.lengths)), fill=1.0)
    schedule = timestep_schedule(steps, shift)                   # (steps + 1, N, L)
    x = sample_euler(velocity, noise_with_given_tokens, schedule, given=packed.given_mask)
"""

from kinetoscope.diffusion.flow import (
    denoised,
    expand_time,
    flow_loss,
    interpolate,
    token_timesteps,
    velocity_target,
)
from kinetoscope.diffusion.guidance import combine, guided, guided_batched
from kinetoscope.diffusion.samplers import (
    SAMPLERS,
    Callback,
    SamplerStep,
    Velocity,
    sample,
    sample_euler,
    sample_heun,
)
from kinetoscope.diffusion.timesteps import (
    logit_normal,
    logit_normal_pdf,
    shift_timesteps,
    timestep_schedule,
    token_shift,
    training_timesteps,
)

__all__ = [
    "SAMPLERS",
    "Callback",
    "SamplerStep",
    "Velocity",
    "combine",
    "denoised",
    "expand_time",
    "flow_loss",
    "guided",
    "guided_batched",
    "interpolate",
    "logit_normal",
    "logit_normal_pdf",
    "sample",
    "sample_euler",
    "sample_heun",
    "shift_timesteps",
    "timestep_schedule",
    "token_shift",
    "token_timesteps",
    "training_timesteps",
    "velocity_target",
]
