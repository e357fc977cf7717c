"""Text-to-video generation: the one place where the VAE, the text encoder and the DiT meet.

    pipe = Pipeline.load("runs/dit")          # a training run folder, or the bundled model
    [video] = pipe.generate("a red circle moving right", width=96, height=64, frames=17)
    write_video("circle.mp4", video, fps=8)   # video: T H W 3 uint8 numpy

Loaded once, generating many. `generate` takes one prompt or a list, each at its own size if
asked (`sizes=[(width, height, frames), ...]`), and returns one `T H W 3` uint8 numpy array
per prompt, in order. Its steps, each a verb of `Pipeline`:

1. `check_sizes`: refuse sizes the VAE cannot code (and bad settings) before any work, with
   the nearest valid values in the message.
2. `encode_text`: prompts, and for classifier-free guidance the negative (default empty)
   prompts, through the text encoder.
3. `lay_out`: a grid of noise of each requested size (latent `c t h w`, drawn on the CPU from
   a generator seeded per prompt), packed into sequences with block masks (`patches.pack`).
   Known latent frames (`given`) enter here as clean tokens, as the DiT was trained.
4. `denoise`: a sampler (Euler or Heun) over the rectified-flow ODE, the velocity wrapped in
   classifier-free guidance, each sample on the schedule its token count shifts (the shift
   training used, `diffusion.token_shift`).
5. `patches.unpack`: tokens back to one latent `c t h w` per prompt.
6. `decode`: the VAE, chunked in time (and tiled in space for large frames).
7. uint8 frames `T H W 3`.

Determinism: the same prompts, seeds and settings give bit-identical videos on the same machine
(noise comes from `torch.Generator`s seeded per prompt, on the CPU, whatever the device).

Model folders: see `kinetoscope.model_folder` (`find_model` says which parts it found).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from kinetoscope.checkpoint import load_config, load_weights
from kinetoscope.diffusion import (
    SAMPLERS,
    Callback,
    SamplerStep,
    Velocity,
    guided_batched,
    interpolate,
    sample,
    timestep_schedule,
    token_shift,
)
from kinetoscope.dit import DiT, DiTConfig
from kinetoscope.io import to_float, to_uint8
from kinetoscope.model_folder import (  # noqa: F401 (re-exported: the pipeline's API)
    RUN_CHECKPOINT,
    ModelFiles,
    default_model_dir,
    dit_folder,
    find_model,
    resolve_device,
)
from kinetoscope.nn import resolve_precision
from kinetoscope.patches import PackedBatch, pack, patch_grid, unpack
from kinetoscope.text import TextEncoder, concat_text, load_text_encoder
from kinetoscope.text.expand import Expander, PromptExpander
from kinetoscope.vae import VideoVAE, load_vae

Size = tuple[int, int, int]  # (width, height, frames) of a pixel video
GivenLatent = tuple[Tensor, Sequence[int]]  # (clean latent c t h w, latent frame indices)

DEFAULT_SIZE: Size = (96, 64, 17)  # a world-benchmark canvas, 2 s at 8 fps
DEFAULT_STEPS = 30
DEFAULT_GUIDANCE = 4.0  # the training previews' scale
DEFAULT_STRENGTH = 0.6  # SDEdit: keeps the input's layout and motion, lets colours and shapes go
DECODE_CHUNK = 4  # latent frames per VAE decode call after the first: memory of one chunk
DECODE_TILE = 512  # pixels: larger frames are decoded in blended tiles


@dataclass(frozen=True)
class Given:
    """Pixel frames a generated video must show: `frames` (`T H W 3` uint8, at the output's
    size) from output frame `at` on. They enter the DiT as clean latent frames and come back
    verbatim in the output.

    The causal VAE codes frame 0 alone and then groups of 4 frames, so a given clip fills whole
    latent frames: at `at = 0` it has 1 + 4m frames; later it starts a group (`at = 1 + 4j`)
    and has 4m frames. A single image given later than frame 0 is held for a whole group (4
    frames). `latent_frames` says which latent frames a placement fills.
    """

    frames: np.ndarray
    at: int = 0

    def __post_init__(self) -> None:
        frames = self.frames
        if not (isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4
                and frames.shape[-1] == 3 and len(frames) > 0):  # fmt: skip
            raise ValueError(
                "given frames must be a T H W 3 uint8 array (read one with io.read_video), got "
                f"{type(frames).__name__} {getattr(frames, 'shape', '')}"
            )
        if not _is_int(self.at) or self.at < 0:
            raise ValueError(f"a given clip's start frame must be an integer >= 0, got {self.at!r}")

    def held(self) -> np.ndarray:
        """The frames as placed: an image given after frame 0 held for a group of 4."""
        return (
            np.repeat(self.frames, 4, axis=0)
            if self.at > 0 and len(self.frames) == 1
            else self.frames
        )

    def latent_frames(self, total: int, temporal_factor: int = 4) -> list[int]:
        """Latent frames of a `total`-frame video this placement fills; ValueError if it does
        not fill whole ones (the message says where it may go)."""
        count, tf = len(self.held()), temporal_factor
        if self.at == 0 and (count - 1) % tf == 0:
            first, latents = 0, 1 + (count - 1) // tf
        elif self.at > 0 and (self.at - 1) % tf == 0 and count % tf == 0:
            first, latents = 1 + (self.at - 1) // tf, count // tf
        else:
            raise ValueError(
                f"{count} given frames at frame {self.at} do not fill whole latent frames: "
                f"give 1 + {tf}k frames at frame 0, or {tf}k frames (or one image) starting at "
                f"frame 1 + {tf}j"
            )
        if self.at + count > total:
            raise ValueError(
                f"{count} given frames at frame {self.at} run past the video's {total} frames"
            )
        return list(range(first, first + latents))


class Pipeline:
    """Text to video with a DiT, a VAE and a text encoder, loaded once (see the module doc).

    Build from a model folder with `Pipeline.load`, or from parts in memory (tests, notebooks).
    `precision` is "auto" (bf16 autocast for the DiT where bf16 is fast, as in training), "bf16"
    or "fp32"; the VAE decodes in fp32. `timings` holds the seconds each stage of the last
    `generate` took: text, sampling, decoding.
    """

    def __init__(
        self,
        dit: DiT,
        vae: VideoVAE,
        text: TextEncoder,
        *,
        device: torch.device | str | None = None,
        precision: str = "auto",
    ) -> None:
        if dit.config.latent_channels != vae.config.latent_channels:
            raise ValueError(
                f"the DiT takes {dit.config.latent_channels} latent channels but the VAE makes "
                f"{vae.config.latent_channels}; load the VAE the DiT was trained with"
            )
        if dit.config.text_dim != text.dim:
            raise ValueError(
                f"the DiT takes text of width {dit.config.text_dim} but the text encoder gives "
                f"{text.dim}; load the text encoder the DiT was trained with"
            )
        if device is None:
            device = next(dit.parameters()).device
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.dit = dit.to(self.device).eval().requires_grad_(False)
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        self.text = text
        self.files: ModelFiles | None = None  # set by `load`
        self.timings: dict[str, float] = {}
        self.expander: Expander | None = None  # prompt expansion; the bundled one on first use
        self.expanded: list[str] = []  # the prompts of the last `generate(expand=True)`

    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike | None = None,
        *,
        vae: str | os.PathLike | None = None,
        text_encoder: str | None = None,
        device: torch.device | str | None = None,
        precision: str = "auto",
        sizes: Sequence[Size] | None = None,
    ) -> Pipeline:
        """A pipeline from a model folder (see `find_model`; None: the bundled world model).

        `device` defaults to the GPU where there is one. `sizes` ((width, height, frames), ...)
        are checked as soon as the VAE is loaded, before the DiT and the text encoder, so a
        bad size is refused in a fraction of a second.
        """
        device = resolve_device(None if device is None else str(device))
        files = find_model(model_dir, vae=vae, text_encoder=text_encoder)
        vae_model = load_vae(files.vae)
        if sizes is not None:
            _check_vae_sizes(vae_model, sizes)
        dit = DiT(load_config(files.dit, DiTConfig))
        load_weights(files.dit, dit)
        text = load_text_encoder(files.text_encoder)
        pipeline = cls(dit, vae_model, text, device=device, precision=precision)
        pipeline.files = files
        return pipeline

    # -- 1. sizes ---------------------------------------------------------------------------

    def check_sizes(self, sizes: Sequence[Size]) -> list[tuple[int, int, int]]:
        """Latent sizes (t, h, w) of pixel sizes (width, height, frames); ValueError naming the
        nearest valid values for a size the VAE cannot code or the DiT cannot patch."""
        latents = _check_vae_sizes(self.vae, sizes)
        for i, latent in enumerate(latents):
            try:
                patch_grid(latent, self.dit.config.patch)
            except ValueError as error:
                raise ValueError(f"{_which(i, len(sizes))}{error}") from None
        self.check_memory(sizes)
        return latents

    def memory_needed(self, size: Size) -> int:
        """Bytes one (width, height, frames) video needs at its peak, estimated: the DiT's
        activations of one block over its tokens (both guidance branches; attention stays
        within the sample, so it grows with the tokens, not their square) and the decoded video
        (float frames, the decoder's widest layer over a chunk of frames, uint8 output)."""
        width, height, frames = size
        cfg, vae = self.dit.config, self.vae.config
        tokens = (width // vae.size_multiple) * (height // vae.size_multiple) * (
            1 + (frames - 1) // vae.temporal_factor)  # fmt: skip
        dit = 2 * tokens * cfg.hidden_size * (8 + 2 * cfg.mlp_ratio) * 4
        chunk = min(frames, 1 + DECODE_CHUNK * vae.temporal_factor)
        side = min(width, DECODE_TILE) * min(height, DECODE_TILE)
        decoder = side * chunk * vae.channels[0] * 4 * 3
        video = width * height * frames * 3 * (4 + 1)
        return dit + decoder + video

    def check_memory(self, sizes: Sequence[Size]) -> None:
        """ValueError, before any work, for a size whose estimated need (`memory_needed`) is
        more than the device has free, naming the largest width that fits."""
        free = available_memory(self.device)
        if free is None:
            return
        for i, size in enumerate(sizes):
            need = self.memory_needed(size)
            if need <= free:
                continue
            width, height, frames = size
            low, high = 0, width // 16  # in multiples of 16: the largest that fits
            while low < high:
                mid = (low + high + 1) // 2
                low, high = (mid, high) if self.memory_needed((16 * mid, height, frames)) <= free else (low, mid - 1)  # fmt: skip
            fits = 16 * low
            raise ValueError(
                f"{_which(i, len(sizes))}a {width}x{height}x{frames} video needs about "
                f"{need / 2**30:.1f} GiB to generate and this machine has "
                f"{free / 2**30:.1f} GiB free; ask for less ("
                + (
                    f"at {height} px high and {frames} frames, a width of {fits} fits)"
                    if fits
                    else "a smaller height or fewer frames)"
                )
            )

    # -- 2. text ----------------------------------------------------------------------------

    def encode_text(
        self, prompts: Sequence[str], negatives: Sequence[str] | None = None
    ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor] | None]:
        """((B, S, Dtxt), (B, S) mask) of the prompts, and of the negative prompts (the
        unconditional branch of guidance, "" for the empty prompt) where given; on the device."""
        cond = tuple(x.to(self.device) for x in self.text.encode(list(prompts)))
        if negatives is None:
            return cond, None
        return cond, tuple(x.to(self.device) for x in self.text.encode(list(negatives)))

    # -- 3. given frames and the noise grid -------------------------------------------------

    def encode_given(self, given: Sequence[Given], size: Size) -> GivenLatent:
        """The clean latent `c t h w` of a `size` (width, height, frames) video holding `given`,
        and the latent frames they fill (see `Given`). A clip placed after frame 0 is encoded
        behind a copy of its first frame, so its groups are coded as groups, not as frame 0."""
        width, height, frames = size
        tf = self.vae.config.temporal_factor
        latent_size = self.vae.latent_size(frames, height, width)
        latent = torch.zeros((self.dit.config.latent_channels, *latent_size))  # c t h w
        filled: set[int] = set()
        for item in given:
            clip = item.held()  # T H W 3 uint8
            if clip.shape[1:3] != (height, width):
                raise ValueError(
                    f"given frames are {clip.shape[2]}x{clip.shape[1]} but the video is "
                    f"{width}x{height}; fit them first (conditioning.fit_frames)"
                )
            indices = item.latent_frames(frames, tf)
            if filled & set(indices):
                raise ValueError(f"given clips overlap at frame {item.at}; give each frame once")
            filled |= set(indices)
            lead = clip if item.at == 0 else np.concatenate([clip[:1], clip])  # T' H W 3
            video = to_float(lead, device=self.device)[None]  # 1 3 T' H W
            z = self.vae.encode(video, chunk_frames=DECODE_CHUNK * tf)[0].float().cpu()
            latent[:, indices] = z if item.at == 0 else z[:, 1:]  # c t' h w
        return latent, sorted(filled)

    def lay_out(
        self,
        latent_sizes: Sequence[tuple[int, int, int]],
        seeds: Sequence[int],
        given: Sequence[GivenLatent | None] | None = None,
    ) -> PackedBatch:
        """Noise latents `c t h w` of the given sizes, one seeded generator each (on the CPU),
        packed into sequences on the device: each sample whole, short ones sharing.

        `given[i] = (latent c t h w, latent frame indices)` puts those frames of sample i in
        clean, marked in `given_mask` (timestep 0, never moved by the sampler).
        """
        c = self.dit.config.latent_channels
        noise, given_frames = [], []
        for i, (size, seed) in enumerate(zip(latent_sizes, seeds, strict=True)):
            generator = torch.Generator().manual_seed(int(seed))
            z = torch.randn((c, *size), generator=generator)  # c t h w
            known = None if given is None else given[i]
            if known is not None:
                latent, frames = known
                if tuple(latent.shape) != tuple(z.shape):
                    raise ValueError(
                        f"given latent {i} has shape {tuple(latent.shape)}, but sample {i} is "
                        f"{tuple(z.shape)}; give a latent of the sample's size"
                    )
                z[:, list(frames)] = latent[:, list(frames)].to(z)
            noise.append(z)
            given_frames.append(None if known is None else list(known[1]))
        return pack(noise, patch=self.dit.config.patch, given_frames=given_frames).to(self.device)

    # -- 4. sampling ------------------------------------------------------------------------

    def denoise(
        self,
        packed: PackedBatch,
        text: tuple[Tensor, Tensor],
        negative: tuple[Tensor, Tensor] | None = None,
        *,
        steps: int = DEFAULT_STEPS,
        guidance: float = DEFAULT_GUIDANCE,
        sampler: str = "euler",
        shift: float | None = None,
        progress: bool = False,
        callback: Callback | None = None,
        init: Tensor | None = None,
        strength: float = 1.0,
    ) -> Tensor:
        """Clean tokens (N, L, Din): the sampler run from `packed.tokens` (noise, and clean
        given tokens) at t = 1 down to t = 0.

        SDEdit (Meng et al. 2022): with `init` (N, L, Din), the clean tokens of a video to edit,
        sampling starts `strength` of the way along the schedule, from `init` noised to that
        time with `packed.tokens` as the noise (strength 1: plain generation).

        `text` is the prompts' (embeddings (B, S, Dtxt), mask (B, S)), row i for sample i;
        `negative` the unconditional branch, used when `guidance` is not 1. Each sample follows
        the schedule its token count shifts (`token_shift`, as in training) unless `shift`
        gives one shift for all. `callback` sees every step (a `SamplerStep`).
        """
        lengths = torch.tensor(packed.lengths)  # (num_samples,)
        per_sample = token_shift(lengths) if shift is None else torch.full(lengths.shape, shift)
        shifts = packed.per_token(per_sample.float().to(self.device), fill=1.0)  # (N, L)
        schedule = timestep_schedule(steps, shifts)  # (steps + 1, N, L)
        hold = packed.given_mask | ~packed.valid_mask  # given tokens and padding never move
        use_negative = guidance != 1 and negative is not None
        velocity = self._velocity(packed, text, negative if use_negative else None, guidance)
        start = 0 if init is None else steps - round(steps * strength)
        x = packed.tokens.float()  # (N, L, Din)
        if init is not None:
            x = torch.where(hold[..., None], x, interpolate(init.float(), x, schedule[start]))
        bar = tqdm(total=steps - start, desc="sampling", unit="step", disable=not progress)

        def on_step(step: SamplerStep) -> None:
            bar.update(1)
            if callback is not None:
                callback(step)

        try:
            return sample(velocity, x, schedule, sampler, given=hold, callback=on_step, start=start)
        finally:
            bar.close()

    def _velocity(
        self,
        packed: PackedBatch,
        text: tuple[Tensor, Tensor],
        negative: tuple[Tensor, Tensor] | None,
        guidance: float,
    ) -> Velocity:
        """The DiT as a `velocity(x, t)` over the packed tokens, guided when `negative` is set."""
        coords, index = packed.coords, packed.sample_index  # (N, L, 4), (N, L)
        embeddings, mask = text  # (B, S, Dtxt), (B, S)
        if negative is not None:
            # One call on the doubled batch (`guided_batched`): the conditional sequences, then
            # the same sequences again with sample i reading text row B + i (its negative).
            rows = embeddings.shape[0]
            embeddings, mask = concat_text([text, negative])  # (2B, S', Dtxt), (2B, S')
            coords = torch.cat([coords, coords])  # (2N, L, 4)
            index = torch.cat([index, torch.where(index >= 0, index + rows, index)])  # (2N, L)
        bf16 = self.precision == "bf16"

        def velocity(x: Tensor, t: Tensor) -> Tensor:
            with torch.autocast(self.device.type, torch.bfloat16, enabled=bf16):
                v = self.dit(x, coords, t, embeddings, mask, index)  # (N, L, Din)
            return v.float()

        return velocity if negative is None else guided_batched(velocity, guidance)

    # -- 6. decoding ------------------------------------------------------------------------

    def decode(self, latents: Sequence[Tensor]) -> list[np.ndarray]:
        """uint8 videos `T H W 3` of normalised latents `c t h w`, one VAE call each, chunked
        in time (`DECODE_CHUNK` latent frames at a time) and tiled beyond `DECODE_TILE` px."""
        config = self.vae.config
        tile = max(DECODE_TILE, 2 * config.tile_overlap)
        videos = []
        for z in latents:
            height, width = (n * config.spatial_factor for n in z.shape[-2:])
            video = self.vae.decode(
                z[None].float().to(self.device),  # 1 c t h w
                chunk_frames=DECODE_CHUNK,
                tile=tile if max(height, width) > tile else None,
            )  # 1 3 T H W in [-1, 1]
            videos.append(to_uint8(video[0]))  # T H W 3 uint8
        return videos

    # -- generate: the steps in order -------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        width: int | None = None,
        height: int | None = None,
        frames: int | None = None,
        sizes: Sequence[Size] | None = None,
        steps: int = DEFAULT_STEPS,
        guidance: float = DEFAULT_GUIDANCE,
        seed: int | Sequence[int] = 0,
        sampler: str = "euler",
        negative: str | Sequence[str] = "",
        shift: float | None = None,
        progress: bool = True,
        callback: Callback | None = None,
        given: Sequence[Given] | None = None,
        edit: np.ndarray | None = None,
        strength: float = DEFAULT_STRENGTH,
        expand: bool = False,
    ) -> list[np.ndarray]:
        """Videos for `prompts`: a list of `T H W 3` uint8 numpy arrays, one per prompt, in order.

        Every prompt is `width x height` pixels and `frames` frames (defaults `DEFAULT_SIZE`;
        frames = 1 is an image), or `sizes[i] = (width, height, frames)` for prompt i. Sizes
        must be multiples of the VAE's `size_multiple` (16) and frame counts 1 + 4k; others are
        refused before any work with the nearest valid values. `steps` sampler steps of
        `sampler` ("euler", or "heun": two DiT calls a step); classifier-free guidance of scale
        `guidance` against `negative` (one for all prompts or one each; "" is the empty
        prompt), none at 1. `seed` seeds prompt i's noise with seed + i (or give one seed per
        prompt): the same seed, prompt and settings give the same video. `shift` replaces the
        token-count timestep shift. `progress` shows a bar over the steps; `callback` sees each
        `SamplerStep`. Seconds per stage land in `self.timings`.

        Conditioning (`kinetoscope.conditioning` builds it for each mode), shared by every
        prompt, all then of one size: `given` frames (`Given`: an image to animate, the end of a
        video to extend, ...) enter as clean tokens and come back verbatim; `edit`, a video of
        the output's size (`T H W 3` uint8), is re-generated from `strength` of the way along
        the sampler (SDEdit; 0 returns it unchanged, 1 ignores it).

        `expand` rewrites each prompt into the detailed caption style the model trained on
        (`self.expander`, by default the bundled `text.expand.PromptExpander`), seeded by the
        prompt's seed; the rewritten prompts are kept in `self.expanded`.
        """
        # 1. Check every setting and size before any work.
        prompts = _strings(prompts, "prompts")
        n = len(prompts)
        if sizes is None:
            w, h, f = DEFAULT_SIZE
            size = (
                w if width is None else width,
                h if height is None else height,
                f if frames is None else frames,
            )
            sizes = [size] * n
        elif (width, height, frames) != (None, None, None):
            raise ValueError("pass sizes=[(width, height, frames), ...] or width/height/frames")
        elif len(sizes) != n:
            raise ValueError(f"sizes has {len(sizes)} entries for {n} prompts; give one each")
        latent_sizes = self.check_sizes(sizes)
        if not _is_int(steps) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if not _is_number(guidance) or not math.isfinite(guidance) or guidance < 0:
            raise ValueError(f"guidance must be a finite scale >= 0 (1: none), got {guidance!r}")
        if not isinstance(sampler, str) or sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
        if shift is not None and not (_is_number(shift) and math.isfinite(shift) and shift > 0):
            raise ValueError(f"shift must be a positive number or None, got {shift!r}")
        seeds = _seeds(seed, n)
        if len(seeds) != n:
            raise ValueError(f"{len(seeds)} seeds for {n} prompts; give one seed or one each")
        negatives = [negative] * n if isinstance(negative, str) else _strings(negative, "negative")
        if len(negatives) != n:
            raise ValueError(f"{len(negatives)} negatives for {n} prompts; give one or one each")
        _check_conditioning(sizes, given, edit, strength)
        if edit is not None and strength == 0:  # nothing to re-generate: the input, untouched
            self.timings = {"text": 0.0, "sampling": 0.0, "decoding": 0.0}
            return [edit.copy() for _ in range(n)]

        # 2. Text: the prompts (expanded if asked), and the negatives for guidance.
        start = time.perf_counter()
        if expand:
            if self.expander is None:
                self.expander = PromptExpander.load()
            video = any(size[2] > 1 for size in sizes)
            prompts = [self.expander.expand(p, seed=s, video=video) for p, s in zip(prompts, seeds, strict=True)]  # fmt: skip
            self.expanded = prompts
        text, uncond = self.encode_text(prompts, negatives if guidance != 1 else None)
        self.timings = {"text": time.perf_counter() - start}

        # 3. A grid of noise of each size, packed into sequences with block masks; given
        # frames enter as clean tokens, a video to edit as the clean tokens to start from.
        start = time.perf_counter()
        known = None if not given else self.encode_given(given, sizes[0])
        packed = self.lay_out(latent_sizes, seeds, None if known is None else [known] * n)
        init = None
        if edit is not None:
            latent, _ = self.encode_given([Given(edit, 0)], sizes[0])
            init = pack([latent] * n, patch=self.dit.config.patch).tokens.to(self.device)

        # 4. Sample: guided velocity, each sample on its own token-count-shifted schedule.
        tokens = self.denoise(
            packed,
            text,
            uncond,
            steps=int(steps),
            guidance=float(guidance),
            sampler=sampler,
            shift=shift,
            progress=progress,
            callback=callback,
            init=init,
            strength=float(strength),
        )  # (N, L, Din)

        if not bool(torch.isfinite(tokens[packed.valid_mask]).all()):
            raise FloatingPointError(
                "the model produced values that are not finite (NaN or infinity) while sampling; "
                "its weights may be damaged, or bf16 overflowed (Pipeline precision='fp32'), or "
                "the guidance is too high"
            )

        # 5. Tokens back to one latent `c t h w` per prompt.
        latents = unpack(packed, tokens)
        self.timings["sampling"] = time.perf_counter() - start

        # 6-7. Decode with the VAE to uint8 frames `T H W 3`.
        start = time.perf_counter()
        videos = self.decode(latents)
        for video in videos:  # the user's frames come back verbatim, not through the VAE
            for item in given or ():
                held = item.held()
                video[item.at : item.at + len(held)] = held
        self.timings["decoding"] = time.perf_counter() - start
        return videos


# ---------------------------------------------------------------------------------------------
# Checks


def available_memory(device: torch.device) -> int | None:
    """Bytes free on `device` (the host's available memory for a CPU; None if unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _which(i: int, count: int) -> str:
    """A prefix naming size i of a batch in error messages (nothing for a single size)."""
    return f"sizes[{i}]: " if count > 1 else ""


def _check_vae_sizes(vae: VideoVAE, sizes: Sequence[Size]) -> list[tuple[int, int, int]]:
    """Latent (t, h, w) of each (width, height, frames); the VAE's ValueError, which names the
    nearest valid values, for one it cannot code."""
    latents = []
    for i, size in enumerate(sizes):
        if len(size) != 3 or not all(isinstance(v, int | np.integer) for v in size):
            where = _which(i, len(sizes))
            raise ValueError(f"{where}a size is (width, height, frames) integers, got {size!r}")
        width, height, frames = (int(v) for v in size)
        try:
            latents.append(vae.latent_size(frames, height, width))
        except ValueError as error:
            raise ValueError(f"{_which(i, len(sizes))}{error}") from None
    return latents


def _check_conditioning(
    sizes: Sequence[Size], given: Sequence[Given] | None, edit: object, strength: object
) -> None:
    """ValueError, before any work, for conditioning that cannot work (see `generate`)."""
    if given is None and edit is None:
        return
    if len(set(map(tuple, sizes))) > 1:
        raise ValueError("given frames and edits are shared by every prompt: use one size")
    if given is not None and edit is not None:
        raise ValueError("pass given frames or a video to edit, not both")
    if given is not None and (
        isinstance(given, Given) or not all(isinstance(g, Given) for g in given)
    ):
        raise ValueError("given must be a list of Given(frames, at)")
    width, height, frames = sizes[0]
    if edit is not None:
        if not isinstance(edit, np.ndarray) or edit.dtype != np.uint8 or edit.ndim != 4:
            raise ValueError(f"edit must be a T H W 3 uint8 video, got {type(edit).__name__}")
        if edit.shape != (frames, height, width, 3):
            raise ValueError(
                f"the video to edit is {edit.shape[2]}x{edit.shape[1]}x{edit.shape[0]} but the "
                f"output is {width}x{height}x{frames}; fit it first (conditioning.fit_frames)"
            )
        if not _is_number(strength) or not 0 <= strength <= 1:
            raise ValueError(f"strength must be a number in [0, 1], got {strength!r}")


def _strings(values: str | Sequence[str], name: str) -> list[str]:
    """One string or a non-empty list of them, as a list."""
    if isinstance(values, str):
        return [values]
    if (
        not isinstance(values, Sequence)
        or not values
        or not all(isinstance(v, str) for v in values)
    ):
        raise ValueError(
            f"{name} must be a string or a non-empty list of strings, got {values!r:.60}"
        )
    return list(values)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


SEED_RANGE = (-(2**63), 2**64)  # what torch.Generator.manual_seed takes


def _seeds(seed: int | Sequence[int], n: int) -> list[int]:
    """Prompt i's seed: `seed + i`, or `seed[i]` for a list; ValueError for anything else."""
    seeds = [int(seed) + i for i in range(n)] if _is_int(seed) else seed
    if isinstance(seeds, str) or not isinstance(seeds, Sequence):
        raise ValueError(f"seed must be an integer or a list of one per prompt, got {seed!r:.60}")
    for value in seeds:
        if not _is_int(value) or not SEED_RANGE[0] <= value < SEED_RANGE[1]:
            raise ValueError(f"a seed is an integer from -2**63 to 2**64 - 1, got {value!r:.60}")
    return [int(value) for value in seeds]


__all__ = [
    "DEFAULT_GUIDANCE",
    "DEFAULT_SIZE",
    "DEFAULT_STEPS",
    "DEFAULT_STRENGTH",
    "Given",
    "ModelFiles",
    "Pipeline",
    "default_model_dir",
    "find_model",
    "resolve_device",
]
