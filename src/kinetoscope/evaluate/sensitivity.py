"""The text-sensitivity probe: does the model read each attribute of its caption?

For fixed rendered world clips at fixed timesteps and fixed noise, it measures the flow loss
with the true caption and with the caption changed in one attribute (direction, color,
shape, size, background, count). A model that reads an attribute predicts the velocity
better with the true words, so its loss rises when they change; a caption-blind model's loss
does not move. The gap is reported relative to the true caption's loss:

    gap[attribute] = (loss(altered) - loss(true)) / loss(true)

It needs no sampling, so it is cheap (one forward per caption and timestep), and it shows
what a model has learnt long before samples do: the trainer logs it every `probe_every`
steps. `win[attribute]` is the share of (clip, timestep) pairs where the true caption wins.

`gap_direction_first` is the direction gap with each clip's first latent frame given (clean,
as image-to-video samples it, and scored only on the frames after it). There every object's
start shows, so the direction words alone tell where it goes: a model that reads them gains
most here, a model blind to them shows no gap here either.

The clips are drawn with their own seed from the "world-model" mix at 64x64 and 96x64, 17
frames, one or two objects and at least one moving in a direction, so that every attribute
can be changed. Captions are the benchmark's template (`suites.prompt`); a changed caption
turns every direction into its opposite, or changes the first object's color, shape or size,
the background, or adds or removes an object.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from kinetoscope.data.world import (
    BACKGROUNDS,
    COLORS,
    DIRECTIONS,
    SHAPES,
    SceneSpec,
    clip_from_scene,
    sample_scene,
)
from kinetoscope.data.world.scene import WORLD_MIXES
from kinetoscope.diffusion import interpolate, velocity_target
from kinetoscope.dit import DiT
from kinetoscope.io import to_float
from kinetoscope.patches import pack
from kinetoscope.text.base import TextEncoder
from kinetoscope.vae import VideoVAE

from .world.suites import describe, prompt

ATTRIBUTES = ("direction", "color", "shape", "size", "background", "count")
# Sampling decides layout and motion in its first steps (t above 0.9): 0.98 probes there.
TIMESTEPS = (0.3, 0.5, 0.7, 0.9, 0.98)
PROBE_SEED = 90_210  # far from the seeds training worlds are drawn with
_OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
_OPPOSITE |= {f"{a}-{b}": f"{_OPPOSITE[a]}-{_OPPOSITE[b]}" for a in ("up", "down") for b in ("left", "right")}  # fmt: skip
_OTHER_SIZE = {"small": "large", "medium": "large", "large": "small"}
_EXTRA_OBJECT = ("white", "square", "small", "still")  # added for "count" to one-object scenes


@dataclass
class ProbeSet:
    """Encoded probe clips with their true and changed captions."""

    latents: list[Tensor]  # normalised latents (c, t, h, w), one per clip
    captions: list[str]  # the true caption of each clip
    altered: dict[str, list[str]]  # attribute -> the changed caption of each clip
    timesteps: tuple[float, ...] = TIMESTEPS
    seed: int = 0  # seed of the noise


def altered_captions(scene: SceneSpec) -> dict[str, str]:
    """The scene's caption changed in each attribute of `ATTRIBUTES` (one change each)."""
    objects = [(o.color, o.shape, o.size, o.motion) for o in scene.objects]
    first_color, first_shape, first_size, first_motion = objects[0]
    taken = {(c, s) for c, s, _, _ in objects}
    used_colors = {c for c, *_ in objects}
    color = next(
        c for c in COLORS if c not in used_colors and COLORS[c] != BACKGROUNDS[scene.background]
    )
    shape = next(s for s in SHAPES if s != first_shape and (first_color, s) not in taken)
    background = next(b for b in BACKGROUNDS if b != scene.background and all(
        COLORS[c] != BACKGROUNDS[b] for c in used_colors))  # fmt: skip
    count = objects[:-1] if len(objects) > 1 else [*objects, _EXTRA_OBJECT]
    changed = {
        "direction": [(c, s, z, _OPPOSITE.get(m, m)) for c, s, z, m in objects],
        "color": [(color, first_shape, first_size, first_motion), *objects[1:]],
        "shape": [(first_color, shape, first_size, first_motion), *objects[1:]],
        "size": [(first_color, first_shape, _OTHER_SIZE[first_size], first_motion), *objects[1:]],
        "count": count,
    }
    out = {name: describe(objs, scene.background) for name, objs in changed.items()}
    out["background"] = describe(objects, background)
    return {name: out[name] for name in ATTRIBUTES}


def probe_scenes(count: int = 32, seed: int = PROBE_SEED) -> list[SceneSpec]:
    """`count` probe scenes: 17 frames at 64x64 or 96x64, one or two objects, at least one
    moving in a direction; drawn from the world-model mix with `seed`, the same every time."""
    base = replace(WORLD_MIXES["world-model"], min_frames=17, max_frames=17, max_objects=2)
    base = replace(base, min_side=64, max_side=96, aspect_ratios=("1:1", "3:2"))
    rng = np.random.default_rng(seed)
    scenes: list[SceneSpec] = []
    while len(scenes) < count:
        scene = sample_scene(rng, base)
        if scene.height == 64 and any(o.motion in DIRECTIONS for o in scene.objects):
            scenes.append(scene)
    return scenes


@torch.no_grad()
def build_probe(
    vae: VideoVAE, count: int = 32, seed: int = PROBE_SEED, device: torch.device | str = "cpu"
) -> ProbeSet:
    """Render and encode the probe clips (posterior means, fp32) with their captions."""
    latents, captions, altered = [], [], {name: [] for name in ATTRIBUTES}
    for scene in probe_scenes(count, seed):
        frames = clip_from_scene(scene).frames  # T H W 3 uint8
        video = to_float(frames, device=device)[None]  # 1 3 T H W
        latents.append(vae.encode(video)[0].float().cpu())  # c t h w
        captions.append(prompt(scene))
        for name, text in altered_captions(scene).items():
            altered[name].append(text)
    return ProbeSet(latents, captions, altered)


def _per_clip_losses(
    dit: DiT, text: TextEncoder, probe: ProbeSet, captions: list[str], device, autocast,
    first_given: bool = False,
) -> Tensor:  # fmt: skip
    """Flow loss (clips, timesteps) of every probe clip under `captions`, fixed noise; with
    `first_given`, latent frame 0 is clean and the loss is over the frames after it."""
    patch = dit.config.patch
    given = [[0]] * len(probe.latents) if first_given else None
    packed = pack(probe.latents, None, patch, given).to(device)
    emb, mask = text.encode(captions)  # (B, S, Dtxt), (B, S)
    generator = torch.Generator().manual_seed(probe.seed)
    noise = torch.randn(packed.tokens.shape, generator=generator).to(device)  # (N, L, Din)
    target = velocity_target(packed.tokens, noise)
    rows = []
    for t in probe.timesteps:
        t_tok = torch.full(packed.sample_index.shape, t, device=device) * packed.loss_mask
        with autocast:
            velocity = dit.forward_packed(
                interpolate(packed.tokens, noise, t_tok), t_tok, packed, emb.to(device),
                mask.to(device),
            )  # fmt: skip
        per_token = (velocity.float() - target).square().mean(-1)  # (N, L)
        scored = packed.sample_index.masked_fill(~packed.loss_mask, -1)  # given tokens: out
        rows.append(packed_sample_means(per_token, scored, len(probe.latents)))
    return torch.stack(rows, dim=1)  # (clips, timesteps)


def packed_sample_means(values: Tensor, sample_index: Tensor, samples: int) -> Tensor:
    """Mean of per-token `values` (N, L) over each sample's tokens: (samples,)."""
    keep = sample_index >= 0
    index = sample_index[keep]
    sums = torch.zeros(samples, device=values.device).index_add_(0, index, values[keep].float())
    counts = torch.zeros(samples, device=values.device).index_add_(
        0, index, torch.ones_like(index, dtype=torch.float32)
    )
    return sums / counts


@torch.no_grad()
def text_sensitivity(
    dit: DiT,
    text: TextEncoder,
    probe: ProbeSet,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> dict[str, float]:
    """Relative loss gap and win rate per attribute, plus the true caption's loss.

    Returns {"loss": ..., "gap_<attribute>": ..., "win_<attribute>": ...} (see the module
    docstring), "gap_<attribute>_t<t>" per timestep, and "gap_direction_first" and
    "win_direction_first" with the first latent frame given.
    """
    device = torch.device(device)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16")
    was_training = dit.training
    dit.eval()
    true = _per_clip_losses(dit, text, probe, probe.captions, device, autocast)  # (clips, T)
    out = {"loss": float(true.mean())}
    for name in ATTRIBUTES:
        changed = _per_clip_losses(dit, text, probe, probe.altered[name], device, autocast)
        out[f"gap_{name}"] = float((changed.mean() - true.mean()) / true.mean())
        out[f"win_{name}"] = float((changed > true).float().mean())
        for k, t in enumerate(probe.timesteps):
            gap = (changed[:, k].mean() - true[:, k].mean()) / true[:, k].mean()
            out[f"gap_{name}_t{t:g}"] = float(gap)
    true, changed = (_per_clip_losses(dit, text, probe, captions, device, autocast, True)
                     for captions in (probe.captions, probe.altered["direction"]))  # fmt: skip
    out["gap_direction_first"] = float((changed.mean() - true.mean()) / true.mean())
    out["win_direction_first"] = float((changed > true).float().mean())
    dit.train(was_training)
    return out


__all__ = [
    "ATTRIBUTES",
    "ProbeSet",
    "altered_captions",
    "build_probe",
    "packed_sample_means",
    "probe_scenes",
    "text_sensitivity",
]
