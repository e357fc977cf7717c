"""The causal video VAE: pixels `B 3 T H W` in [-1, 1] <-> latents `B c t h w`.

Read top to bottom: config and presets, causal building blocks, encoder, decoder, the model
with its public verbs (`encode`, `decode`, `forward`, `check_size`), chunked and tiled
inference, and latent statistics.

Layout of time. The first frame is coded on its own and every later group of
`temporal_factor` frames (4 with the defaults) becomes one latent frame, so `1 + 4k` frames map
to `1 + k` latent frames and an image is the k = 0 case of the same model. Every convolution
is causal in time: it pads on the left only, by repeating the first frame, so a latent frame
never sees a later pixel frame. Normalisation (`VAEConfig.norm`) never mixes frames: RMS over
channels at each position, or GroupNorm over the pixels of each frame. This keeps the model
causal and makes chunked inference equal to one pass; with RMS, tiling differences stay at
the tiles' borders, while per-frame GroupNorm also sees each tile's own statistics.

Chunked inference. In streaming mode each causal convolution keeps the last input frames it
needs (its cache) from one call to the next, so encoding frames [0], [1..4], [5..8], ...
gives the latents of one pass while memory stays that of one chunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

LOGVAR_RANGE = (-30.0, 20.0)  # clamp of the posterior log-variance, as in the LDM autoencoder
LOGVAR_INIT = -6.0  # initial posterior log-variance (see VideoVAE.init_weights)
NORMS = ("rms", "group", "none")  # choices of VAEConfig.norm


@dataclass
class VAEConfig:
    """Architecture of a `VideoVAE`; the checkpoint carries it as JSON."""

    in_channels: int = 3  # RGB
    latent_channels: int = 16  # 16 values per 4x8x8 pixels: 192x fewer numbers than RGB
    # Pixels folded into channels (per frame) before the first conv and unfolded after the
    # last: p = 2 keeps every 3D conv off the full resolution, 4x cheaper where it costs most.
    patch_size: int = 1
    # Width of each resolution level; one spatial 2x downsample between levels, so the spatial
    # factor is patch_size x 2^(levels - 1): 8 with these four levels.
    channels: tuple[int, ...] = (64, 128, 256, 256)
    # Which of those downsamples also halve time (two of them give 4x).
    temporal_down: tuple[bool, ...] = (False, True, True)
    encoder_blocks: int = 1  # residual blocks per encoder level
    decoder_blocks: int = 2  # the decoder gets one more, as in the LDM autoencoder
    size_multiple: int = 16  # spatial factor x the DiT's 2x2 patch: every latent patchifies
    # Time extent of the residual blocks' kernels at each level: 3 mixes neighbouring frames,
    # 1 makes the level per-frame 2D (a third of those convs' FLOPs). Time is also mixed by the
    # strided down- and upsampling convs, whatever this says. None: 3 at every level.
    temporal_kernel: tuple[int, ...] | None = None
    # "rms": RMS over channels at each position; "group": GroupNorm over channel groups and
    # the pixels of each frame; "none": no normalisation (zero-initialised residual branches
    # keep it trainable). All keep the model causal and chunking exact; "group" makes a
    # tile's statistics differ from the whole frame's, which the tile blending absorbs.
    norm: str = "rms"
    # Pixels shared by neighbouring tiles in tiled inference: about the decoder's receptive
    # radius, so the part of a tile that its border padding spoils gets no weight.
    tile_overlap: int = 64

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        self.temporal_down = tuple(self.temporal_down)
        self.temporal_kernel = tuple(self.temporal_kernel or (3,) * len(self.channels))
        if len(self.temporal_kernel) != len(self.channels) or any(
            k not in (1, 3) for k in self.temporal_kernel
        ):
            raise ValueError(
                f"temporal_kernel needs one entry of 1 or 3 per level ({len(self.channels)}), "
                f"got {self.temporal_kernel}"
            )
        if len(self.temporal_down) != len(self.channels) - 1:
            raise ValueError(
                f"temporal_down needs one flag per downsample ({len(self.channels) - 1} for "
                f"{len(self.channels)} levels), got {len(self.temporal_down)}"
            )
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {sorted(NORMS)}, got {self.norm!r}")
        if self.size_multiple % self.spatial_factor:
            raise ValueError(
                f"size_multiple ({self.size_multiple}) must be a multiple of the spatial "
                f"factor ({self.spatial_factor})"
            )
        if self.tile_overlap % self.spatial_factor:
            raise ValueError(
                f"tile_overlap ({self.tile_overlap}) must be a multiple of the spatial "
                f"factor ({self.spatial_factor})"
            )

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent pixel along height and width."""
        return self.patch_size * 2 ** (len(self.channels) - 1)

    @property
    def temporal_factor(self) -> int:
        """Pixel frames per latent frame after the first one."""
        return 2 ** sum(self.temporal_down)


VAE_PRESETS: dict[str, VAEConfig] = {
    # Tests: 160k parameters and no conv at full resolution, for fast CPU tests.
    "tiny": VAEConfig(
        latent_channels=4,
        patch_size=2,
        channels=(16, 16, 16),
        temporal_down=(True, True),
        decoder_blocks=1,
    ),
    # The bundled world VAE (weights/world-vae): small enough to train on a 2-core CPU. 2x2
    # pixels per position from the start, per-frame 2D residual blocks (time is mixed only by
    # the strided convs that halve it twice, and their mirrors in the decoder) and per-frame
    # GroupNorm. Measured on world crops (fp32, one thread): 2D blocks reached higher PSNR per
    # step than 3D ones at 0.45 s a step against 0.61; the norm alone (GroupNorm or channel
    # RMS, both with 3D blocks) made no difference over 150 steps (see the model card).
    "world": VAEConfig(
        patch_size=2,
        channels=(32, 64, 128),
        temporal_down=(True, True),
        temporal_kernel=(1, 1, 1),
        decoder_blocks=1,
        norm="group",
    ),
    # A full-size model in the range of published video VAEs (GPU training).
    "base": VAEConfig(),
}


# ---------------------------------------------------------------------------------------------
# Causal building blocks


class ChannelRMSNorm(nn.Module):
    """RMS normalisation over channels at each (t, h, w) position, with a learned gain."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        # Statistics in float32: bf16 sums of squares lose too much on wide layers.
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(1, keepdim=True) + self.eps)
        return (y * self.weight.view(-1, 1, 1, 1)).to(x.dtype)


class FrameGroupNorm(nn.Module):
    """GroupNorm over channel groups and the pixels of each frame (never across frames)."""

    def __init__(self, channels: int, groups: int = 8, eps: float = 1e-6) -> None:
        super().__init__()
        self.groups = math.gcd(groups, channels)
        self.norm = nn.GroupNorm(self.groups, channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        t = x.shape[2]
        frames = rearrange(x, "b c t h w -> (b t) c h w")  # (B T) C H W
        # Statistics in float32, as for ChannelRMSNorm.
        y = F.group_norm(
            frames.float(), self.groups, self.norm.weight, self.norm.bias, self.norm.eps
        )
        return rearrange(y.to(x.dtype), "(b t) c h w -> b c t h w", t=t)


def make_norm(kind: str, channels: int) -> nn.Module:
    """The normalisation layer named by `VAEConfig.norm`."""
    if kind == "rms":
        return ChannelRMSNorm(channels)
    return FrameGroupNorm(channels) if kind == "group" else nn.Identity()


class CausalConv3d(nn.Module):
    """A 3D convolution that sees only the present and the past in time.

    Time is padded on the left with copies of the first frame; space is zero-padded on both
    sides. In streaming mode the last `kt - st` input frames are kept as a cache and put in
    front of the next call's input instead of the padding.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: tuple[int, int, int] = (3, 3, 3),
        stride: tuple[int, int, int] = (1, 1, 1),
    ) -> None:
        super().__init__()
        kt, kh, kw = kernel
        self.kernel_t, self.stride_t = kt, stride[0]
        self.conv = nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=(0, kh // 2, kw // 2))
        self.streaming = False
        self.cache: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        kt, st = self.kernel_t, self.stride_t
        if self.streaming and self.cache is not None:
            x = torch.cat([self.cache, x], dim=2)  # B C (cache+T) H W
        else:
            first = x[:, :, :1].expand(-1, -1, kt - 1, -1, -1)
            x = torch.cat([first, x], dim=2)  # B C (kt-1+T) H W
        frames = x.shape[2]
        assert (frames - kt) % st == 0, f"{frames} padded frames do not tile stride {st}"
        if self.streaming:
            consumed = (frames - kt) // st * st + st
            self.cache = x[:, :, consumed:].clone()  # the last kt - st frames
        return self.conv(x)  # B C' T' H' W'


class ResBlock(nn.Module):
    """norm -> SiLU -> causal conv, twice, plus a skip (1x1x1 conv when widths differ)."""

    def __init__(self, c_in: int, c_out: int, norm: str = "rms", kt: int = 3) -> None:
        super().__init__()
        self.norm1 = make_norm(norm, c_in)
        self.conv1 = CausalConv3d(c_in, c_out, (kt, 3, 3))
        self.norm2 = make_norm(norm, c_out)
        self.conv2 = CausalConv3d(c_out, c_out, (kt, 3, 3))
        self.skip = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve height and width, and time when `temporal`: a strided causal conv.

    With stride 2 in time and two frames of left padding, output j sees input frames
    2j-2..2j, so 1 + 2m frames become 1 + m and the first frame stays alone.
    """

    def __init__(self, c_in: int, c_out: int, temporal: bool) -> None:
        super().__init__()
        self.conv = CausalConv3d(c_in, c_out, (3, 3, 3), stride=(2 if temporal else 1, 2, 2))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)  # B C T H W -> B C' T' H/2 W/2, T' = 1 + (T-1)/2 when temporal


class Upsample(nn.Module):
    """Double height and width, and time when `temporal` (1 + m frames -> 1 + 2m).

    Time: a causal conv makes two frames' worth of channels per frame and they are laid out
    in time; the first frame of a video keeps only its second half, mirroring `Downsample`.
    Space: nearest-neighbour 2x followed by a causal conv (kt x 3 x 3, kt = the level's
    temporal kernel).
    """

    def __init__(self, c_in: int, c_out: int, temporal: bool, kt: int = 3) -> None:
        super().__init__()
        self.time_conv = CausalConv3d(c_in, 2 * c_in, (3, 1, 1)) if temporal else None
        self.conv = CausalConv3d(c_in, c_out, (kt, 3, 3))
        self.streaming = False
        self.started = False  # in streaming mode: has the first frame gone through yet?

    def forward(self, x: Tensor) -> Tensor:
        if self.time_conv is not None:
            x = self.time_conv(x)  # B 2C T H W
            x = rearrange(x, "b (r c) t h w -> b c (t r) h w", r=2)  # B C 2T H W
            if not (self.streaming and self.started):
                x = x[:, :, 1:]  # B C 2T-1 H W: the first frame maps to one frame
            self.started = self.streaming
        t = x.shape[2]
        x = F.interpolate(rearrange(x, "b c t h w -> (b t) c h w"), scale_factor=2.0)
        x = rearrange(x, "(b t) c h w -> b c t h w", t=t)  # B C T 2H 2W
        return self.conv(x)  # B C' T 2H 2W


# ---------------------------------------------------------------------------------------------
# Encoder and decoder


class Encoder(nn.Module):
    """Pixels `B 3 T H W` -> posterior moments `B 2c t h w` (mean and log-variance)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        ch, self.patch = config.channels, config.patch_size
        kt = config.temporal_kernel
        self.conv_in = CausalConv3d(config.in_channels * self.patch**2, ch[0], (kt[0], 3, 3))
        self.levels = nn.ModuleList()
        for i, width in enumerate(ch):
            level = nn.Module()
            level.blocks = nn.ModuleList(
                ResBlock(width, width, config.norm, kt[i]) for _ in range(config.encoder_blocks)
            )
            level.down = (
                Downsample(width, ch[i + 1], config.temporal_down[i]) if i + 1 < len(ch) else None
            )
            self.levels.append(level)
        self.mid = ResBlock(ch[-1], ch[-1], config.norm)
        self.norm_out = make_norm(config.norm, ch[-1])
        self.conv_out = CausalConv3d(ch[-1], 2 * config.latent_channels)

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch
        x = rearrange(x, "b c t (h p) (w q) -> b (c p q) t h w", p=p, q=p)  # B 3pp T H/p W/p
        x = self.conv_in(x)  # B C0 T H/p W/p
        for level in self.levels:
            for block in level.blocks:
                x = block(x)
            if level.down is not None:
                x = level.down(x)  # halves H W (and T): ends at B Cn t h w
        x = self.mid(x)
        return self.conv_out(F.silu(self.norm_out(x)))  # B 2c t h w


class Decoder(nn.Module):
    """Latents `B c t h w` -> pixels `B 3 T H W` (not clamped)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        ch, self.patch = config.channels, config.patch_size
        kt = config.temporal_kernel
        self.conv_in = CausalConv3d(config.latent_channels, ch[-1])
        self.mid = ResBlock(ch[-1], ch[-1], config.norm)
        self.levels = nn.ModuleList()
        for i in reversed(range(len(ch))):
            level = nn.Module()
            level.blocks = nn.ModuleList(
                ResBlock(ch[i], ch[i], config.norm, kt[i]) for _ in range(config.decoder_blocks)
            )
            level.up = (
                Upsample(ch[i], ch[i - 1], config.temporal_down[i - 1], kt[i - 1])
                if i > 0
                else None
            )
            self.levels.append(level)
        self.norm_out = make_norm(config.norm, ch[0])
        self.conv_out = CausalConv3d(ch[0], config.in_channels * self.patch**2, (kt[0], 3, 3))

    def forward(self, z: Tensor) -> Tensor:
        x = self.conv_in(z)  # B Cn t h w
        x = self.mid(x)
        for level in self.levels:
            for block in level.blocks:
                x = block(x)
            if level.up is not None:
                x = level.up(x)  # doubles H W (and T): ends at B C0 T H/p W/p
        x = self.conv_out(F.silu(self.norm_out(x)))  # B 3pp T H/p W/p
        p = self.patch
        return rearrange(x, "b (c p q) t h w -> b c t (h p) (w q)", p=p, q=p)  # B 3 T H W


# ---------------------------------------------------------------------------------------------
# The model


@dataclass
class VAEOutput:
    """What `VideoVAE.forward` returns for training."""

    reconstruction: Tensor  # B 3 T H W, not clamped
    mean: Tensor  # B c t h w, posterior mean (raw, before latent normalisation)
    logvar: Tensor  # B c t h w, posterior log-variance

    def kl(self) -> Tensor:
        """KL(posterior || N(0, I)), averaged over latent elements (a scalar)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).mean()


def _nearest(value: int, multiple: int, offset: int = 0) -> tuple[int, int]:
    """The valid sizes `offset + multiple * k` just below and just above `value`."""
    below = offset + (value - offset) // multiple * multiple
    if below < max(offset, 1):
        below = offset + multiple if offset == 0 else offset
        return below, below
    return below, below + multiple


class VideoVAE(nn.Module):
    """Causal 3D-convolution VAE with a diagonal-Gaussian latent.

    `encode` and `decode` work in normalised latent space: `(z - latent_shift) / latent_scale`
    with per-channel statistics measured on the training data (`compute_latent_stats`) and
    stored with the weights, so the diffusion model sees roughly unit-variance latents.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.register_buffer("latent_shift", torch.zeros(config.latent_channels))
        self.register_buffer("latent_scale", torch.ones(config.latent_channels))
        self.init_weights()

    def init_weights(self) -> None:
        """All initialisation, in one place."""
        for module in self.modules():
            # Convolutions: PyTorch's default (Kaiming-uniform, a=sqrt(5)) weights and uniform
            # biases. Biases must not start at zero: every layer would then be homogeneous in
            # its input, and the channel norms would make the code blind to brightness (a flat
            # grey and a flat black frame would share one latent).
            if isinstance(module, nn.Conv3d):
                module.reset_parameters()
            # Norm gains start at 1.
            if isinstance(module, ChannelRMSNorm):
                nn.init.ones_(module.weight)
            # Each residual block starts as the identity: its last conv is zero.
            if isinstance(module, ResBlock):
                nn.init.zeros_(module.conv2.conv.weight)
            # Temporal upsampling starts as frame repetition: both output frames copy the
            # current input frame (the last tap of the causal kernel).
            if isinstance(module, Upsample) and module.time_conv is not None:
                conv = module.time_conv.conv
                c = conv.in_channels
                nn.init.zeros_(conv.weight)
                eye = torch.eye(c).view(c, c, 1, 1)
                with torch.no_grad():
                    conv.weight[:c, :, -1] = eye
                    conv.weight[c:, :, -1] = eye
        # The posterior starts nearly deterministic (std e^-3 = 0.05): with unit noise the
        # decoder first sees mostly noise and learns only the mean colour for a long while.
        conv_out = self.encoder.conv_out.conv
        nn.init.constant_(conv_out.bias[self.config.latent_channels :], LOGVAR_INIT)

    # -- sizes ------------------------------------------------------------------------------

    def check_size(self, frames: int, height: int, width: int) -> None:
        """Raise ValueError naming the nearest valid sizes unless the video can be coded."""
        tf, m = self.config.temporal_factor, self.config.size_multiple
        if frames < 1 or (frames - 1) % tf:
            low, high = _nearest(frames, tf, offset=1)
            use = f"{low}" if low == high else f"{low} or {high}"
            raise ValueError(f"frames must be 1 + {tf}k: got {frames}, use {use}")
        for name, size in (("height", height), ("width", width)):
            if size < 1 or size % m:
                low, high = _nearest(size, m)
                use = f"{low}" if low == high else f"{low} or {high}"
                raise ValueError(f"{name} must be a multiple of {m}: got {size}, use {use}")

    def latent_size(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(t, h, w) of the latent of a valid (frames, height, width) video."""
        self.check_size(frames, height, width)
        s, tf = self.config.spatial_factor, self.config.temporal_factor
        return 1 + (frames - 1) // tf, height // s, width // s

    def _check_video(self, video: Tensor) -> None:
        if video.dim() != 5 or video.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected a video batch B {self.config.in_channels} T H W, got shape "
                f"{tuple(video.shape)}; add a batch axis with video[None] for one video"
            )
        self.check_size(*video.shape[2:])

    def _check_latents(self, latents: Tensor) -> None:
        c = self.config.latent_channels
        if latents.dim() != 5 or latents.shape[1] != c:
            raise ValueError(f"expected latents B {c} t h w, got shape {tuple(latents.shape)}")

    # -- training ---------------------------------------------------------------------------

    def forward(self, video: Tensor, generator: torch.Generator | None = None) -> VAEOutput:
        """One pass for training: encode, sample the posterior, decode (raw latents)."""
        self._check_video(video)
        mean, logvar = self.encoder(video).chunk(2, dim=1)  # B c t h w each
        logvar = logvar.clamp(*LOGVAR_RANGE)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + (0.5 * logvar).exp() * noise  # B c t h w
        reconstruction = self.decoder(z)  # B 3 T H W
        return VAEOutput(reconstruction, mean, logvar)

    # -- inference --------------------------------------------------------------------------

    def moments(
        self, video: Tensor, *, chunk_frames: int | None = None, tile: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Raw posterior (mean, log-variance) of `video`, each `B c t h w`."""
        self._check_video(video)
        if chunk_frames is not None and (
            chunk_frames < 1 or chunk_frames % self.config.temporal_factor
        ):
            tf = self.config.temporal_factor
            raise ValueError(
                f"chunk_frames must be a positive multiple of {tf}: got {chunk_frames}"
            )

        def run(v: Tensor) -> Tensor:
            return self._streamed(self.encoder, v, chunk_frames)

        self._check_tile(tile)
        s = self.config.spatial_factor
        moments = self._tiled(run, video, tile, self.config.tile_overlap, scale=1 / s)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def encode(
        self,
        video: Tensor,
        *,
        sample: bool = False,
        generator: torch.Generator | None = None,
        chunk_frames: int | None = None,
        tile: int | None = None,
    ) -> Tensor:
        """Pixels `B 3 T H W` in [-1, 1] -> normalised latents `B c t h w`.

        The posterior mean, or a sample of it with `sample=True`. `chunk_frames` (a multiple of
        4) encodes the first frame and then that many frames at a time with a causal cache;
        `tile` (pixels) encodes overlapping square tiles and blends them.
        """
        mean, logvar = self.moments(video, chunk_frames=chunk_frames, tile=tile)
        z = mean
        if sample:
            noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
            z = mean + (0.5 * logvar).exp() * noise.to(mean.device)
        return (z - self._stat(self.latent_shift)) / self._stat(self.latent_scale)

    def decode(
        self, latents: Tensor, *, chunk_frames: int | None = None, tile: int | None = None
    ) -> Tensor:
        """Normalised latents `B c t h w` -> pixels `B 3 T H W`, clamped to [-1, 1].

        `chunk_frames` decodes that many latent frames at a time (after the first) with a causal
        cache; `tile` (pixels of output) decodes overlapping tiles and blends them.
        """
        self._check_latents(latents)
        if chunk_frames is not None and chunk_frames < 1:
            raise ValueError(f"chunk_frames must be positive: got {chunk_frames}")
        z = latents * self._stat(self.latent_scale) + self._stat(self.latent_shift)

        def run(v: Tensor) -> Tensor:
            return self._streamed(self.decoder, v, chunk_frames)

        self._check_tile(tile)
        s = self.config.spatial_factor
        latent_tile = None if tile is None else tile // s
        overlap = self.config.tile_overlap // s
        return self._tiled(run, z, latent_tile, overlap, scale=s).clamp(-1.0, 1.0)

    def _stat(self, stat: Tensor) -> Tensor:
        return stat.view(1, -1, 1, 1, 1)

    # -- chunked causal inference -----------------------------------------------------------

    @contextmanager
    def _streaming(self) -> Iterator[None]:
        """Turn on the causal caches of every layer, and clear them again afterwards."""
        stateful = [m for m in self.modules() if isinstance(m, CausalConv3d | Upsample)]
        for m in stateful:
            m.streaming = True
        try:
            yield
        finally:
            for m in stateful:
                m.streaming = False
                if isinstance(m, CausalConv3d):
                    m.cache = None
                else:
                    m.started = False

    def _streamed(self, net: nn.Module, x: Tensor, chunk: int | None) -> Tensor:
        """Run `net` over the first frame and then `chunk` frames at a time, carrying caches."""
        if chunk is None or x.shape[2] <= 1 + chunk:
            return net(x)
        with self._streaming():
            pieces = [net(x[:, :, :1])]
            for start in range(1, x.shape[2], chunk):
                pieces.append(net(x[:, :, start : start + chunk]))
        return torch.cat(pieces, dim=2)  # B C T H W

    # -- spatial tiling ---------------------------------------------------------------------

    def _check_tile(self, tile: int | None) -> None:
        s, overlap = self.config.spatial_factor, self.config.tile_overlap
        if tile is not None and (tile % s or tile <= overlap):
            raise ValueError(
                f"tile must be a multiple of {s} pixels larger than tile_overlap ({overlap}): "
                f"got {tile}"
            )

    def _tiled(
        self,
        run: Callable[[Tensor], Tensor],
        x: Tensor,
        tile: int | None,
        overlap: int,
        scale: float,
    ) -> Tensor:
        """Apply `run` to overlapping square tiles of `x` and blend the results linearly.

        `tile` and `overlap` are in units of `x`'s pixels; results are `scale` times larger in space. Each
        tile's weight ramps across the overlap on sides that touch another tile (`_ramp`), and
        the blend is the weighted sum divided by the summed weights.
        """
        height, width = x.shape[-2:]
        if tile is None or (height <= tile and width <= tile):
            return run(x)
        out = weight = None
        for y0 in _starts(height, tile, overlap):
            for x0 in _starts(width, tile, overlap):
                piece = run(x[..., y0 : y0 + tile, x0 : x0 + tile])  # B C T th tw
                if out is None:
                    shape = (*piece.shape[:3], round(height * scale), round(width * scale))
                    out = piece.new_zeros(shape)
                    weight = piece.new_zeros(shape[-2:])
                ph, pw = piece.shape[-2:]
                ramp = round(overlap * scale)
                wy = _ramp(ph, ramp, y0 > 0, y0 + tile < height)
                wx = _ramp(pw, ramp, x0 > 0, x0 + tile < width)
                mask = (wy[:, None] * wx[None, :]).to(piece)
                oy, ox = round(y0 * scale), round(x0 * scale)
                out[..., oy : oy + ph, ox : ox + pw] += piece * mask
                weight[oy : oy + ph, ox : ox + pw] += mask
        assert out is not None and weight is not None and bool((weight > 0).all())
        return out / weight


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    """Offsets of tiles of side `tile` covering `size` with at least `overlap` in common."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    return [*range(0, size - tile, stride), size - tile]


def _ramp(n: int, overlap: int, start: bool, end: bool) -> Tensor:
    """Blend weights along one axis for ends shared with a neighbouring tile.

    The outer quarter of the overlap gets weight 0 (there the tile's border padding shows
    most), then the weight rises linearly over the middle half; a neighbour's weights mirror
    these, so the two sum to 1 across the overlap.
    """
    margin = overlap // 4
    ramp = overlap - 2 * margin
    edge = torch.cat([torch.zeros(margin), torch.arange(1, ramp + 1) / (ramp + 1)])
    w = torch.ones(n)
    if start:
        w[: len(edge)] = edge
    if end:
        w[n - len(edge) :] = edge.flip(0)
    return w


# ---------------------------------------------------------------------------------------------
# Latent statistics


@torch.no_grad()
def compute_latent_stats(
    vae: VideoVAE, clips: Iterable[Tensor], *, chunk_frames: int | None = None
) -> tuple[Tensor, Tensor]:
    """Per-channel (shift, scale) of the raw latents of `clips` (each `3 T H W` or `B 3 T H W`).

    shift is the mean of the posterior means; scale is the standard deviation of posterior
    samples, computed exactly as sqrt(Var[mean] + E[variance]) so it needs no sampling.
    """
    c = vae.config.latent_channels
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    total_var = torch.zeros(c, dtype=torch.float64)
    count = 0
    for clip in clips:
        video = clip if clip.dim() == 5 else clip[None]
        mean, logvar = vae.moments(video, chunk_frames=chunk_frames)  # B c t h w
        mean, var = mean.double().transpose(0, 1).flatten(1), logvar.double().exp()
        total += mean.sum(1)
        total_sq += mean.pow(2).sum(1)
        total_var += var.transpose(0, 1).flatten(1).sum(1)
        count += mean.shape[1]
    if count == 0:
        raise ValueError("compute_latent_stats needs at least one clip")
    shift = total / count
    variance = (total_sq / count - shift.pow(2)).clamp_min(0) + total_var / count
    return shift.float(), variance.sqrt().clamp_min(1e-6).float()
