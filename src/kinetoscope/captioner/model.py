"""The video captioner: VAE latents or RGB frames -> a caption, word by word.

    captioner = Captioner.load(folder)
    [text] = captioner.caption([latent])            # latent: normalised (c, t, h, w)

An encoder-decoder transformer. The encoder reads the video as spacetime patches (as the DiT
does), each with a fixed sinusoidal embedding of its (t, h, w) position, so clips of any size
and length are read alike. It reads either the VAE's latents or, when `config.pixels` is set,
the RGB frames themselves resized to a fixed shorter side (`PixelFrames`, which stands in for
the VAE wherever a captioner's input is made); the decoder writes the caption autoregressively over a
word-level vocabulary (`WordTokenizer`, built from the training captions) with cross-attention
to the encoder's states. Greedy decoding, never naming one object twice (`_DistinctObjects`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor, nn

from kinetoscope.checkpoint import (
    load_config,
    load_meta,
    load_weights,
    resolve_model_folder,
    save_model,
)
from kinetoscope.data.world.palette import COLORS, MOTIONS, REGIONS, SHAPES, SIZES
from kinetoscope.data.world.parse import names_new_object
from kinetoscope.vae import BUNDLED

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
BUNDLED_CAPTIONER = Path(__file__).resolve().parents[1] / "weights" / "world-captioner"
_TOKEN = re.compile(r"[a-z]+(?:-[a-z]+)?|[.,;:]")
# What the object heads name of the object whose centre starts in a token (`Captioner.forward`).
OBJECT_CLASSES: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "shape": SHAPES,
    "size": tuple(SIZES),
    "motion": MOTIONS,
    "region": tuple(r for row in REGIONS for r in row),
}
# Frames after the first whose displacement the track head names: those of the first 5
# latent frames (the VAE codes frame 0, then groups of 4).
TRACK_FRAMES = 16


class WordTokenizer:
    """Words and punctuation of lower-cased captions; specials first (pad is 0)."""

    def __init__(self, vocab: tuple[str, ...]) -> None:
        self.vocab = vocab
        self.index = {word: i for i, word in enumerate(vocab)}

    @staticmethod
    def words(caption: str) -> list[str]:
        """The caption's words and punctuation marks, lower-cased, as the vocabulary holds them."""
        return _TOKEN.findall(caption.lower())

    @classmethod
    def fit(cls, captions: list[str]) -> WordTokenizer:
        return cls((PAD, BOS, EOS, UNK, *sorted({w for c in captions for w in cls.words(c)})))

    def encode(self, caption: str) -> list[int]:
        """<bos> word ids <eos>."""
        unknown = self.index[UNK]
        ids = [self.index.get(w, unknown) for w in self.words(caption)]
        return [self.index[BOS], *ids, self.index[EOS]]

    def decode(self, ids: list[int]) -> str:
        words = []
        for i in ids:
            word = self.vocab[i]
            if word == EOS:
                break
            if word not in (PAD, BOS):
                words.append(word)
        text = " ".join(words)
        text = re.sub(r" ([.,;:])", r"\1", text)
        return re.sub(r"(^|[.] )([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)


@dataclass(frozen=True)
class CaptionerConfig:
    """Sizes of the captioner; the vocabulary travels with it."""

    vocab: tuple[str, ...] = (PAD, BOS, EOS, UNK)
    latent_channels: int = 16  # the world VAE's
    patch: tuple[int, int, int] = (1, 2, 2)  # the DiT's: a token covers 16x16 pixels
    width: int = 256
    heads: int = 4
    encoder_layers: int = 3
    decoder_layers: int = 3
    max_tokens: int = 128  # long captions of three objects run to about 100 words
    # Latent frames read: the first 17 frames show where objects start and how they move;
    # longer clips cost tokens (and time) without changing those words.
    max_latent_frames: int = 5
    # Each token also reads where it sits as a fraction of the canvas and the canvas's size:
    # start regions ("top left") and sizes ("small") are relative to the canvas, which the
    # integer positions alone leave the encoder to work out. Off in captioners trained
    # before it.
    canvas_features: bool = False
    # 0: reads the VAE's latents. S > 0: reads RGB frames resized so the shorter side is S
    # px (`PixelFrames`); `latent_channels` is then 3, `patch` in pixels and frames, and
    # `max_latent_frames` counts frames.
    pixels: int = 0
    # Channels of a convolutional stem that reads each frame before the tokens are cut (0:
    # none, each token's pixels go straight through one linear layer). It halves the frame
    # log2(patch) times (3x3 convolutions, stride 2, doubling the channels), so a token is one
    # cell of its last map; early convolutions let a transformer learn shapes from far fewer
    # images (Xiao et al. 2021).
    stem: int = 0
    # Linear heads over the encoder's states naming each attribute of the object whose centre
    # starts in a first-frame token (`OBJECT_CLASSES`): a training aid (`--object-loss`) that
    # tells the encoder, object by object, what the caption's few words of it say. Captions
    # never read them.
    object_heads: bool = False
    # With the object heads, one more that tracks each object from the token where it
    # starts: where its centre starts, as fractions of the canvas, and its displacement from
    # there at each of the next `TRACK_FRAMES` frames, in shorter sides (`--track-loss`). A
    # motion word names the first direction, which in a crowded scene lasts a frame or two
    # before a collision, and a start region is one of 9 cells; the track asks the encoder to
    # place each object finely and follow it frame by frame, which the words never spell out.
    track_head: bool = False

    def __post_init__(self) -> None:
        if self.width % self.heads or (self.width // 3) < 2:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")
        if self.stem and (self.patch[1] != self.patch[2] or self.patch[1] & (self.patch[1] - 1)):
            raise ValueError(f"a stem needs a square power-of-two patch, got {self.patch[1:]}")
        if self.track_head and not self.object_heads:
            raise ValueError("a track head reads the objects' start tokens: set object_heads")


@dataclass(frozen=True)
class PixelFramesConfig:
    side: int  # the shorter side, in pixels
    multiple: int  # both sides a multiple of this (the captioner's spatial patch)
    latent_channels: int = 3


class PixelFrames(nn.Module):
    """What a pixel captioner reads where another reads a VAE's latents: the RGB frames in
    [-1, 1], resized (bilinear, antialiased) so the shorter side is `side` px and the longer
    keeps the aspect ratio, each rounded to `multiple`. A fixed shorter side puts every
    canvas at the scale of the captions' sizes and regions, which are fractions of it, and
    keeps every frame (the VAE codes frames 1-4 together). It offers the calls the latent
    cache and the file reader make of a VAE (`encode`, `moments`, `latent_size`)."""

    cache_label = "resize frames"  # the latent cache's progress bar: no VAE runs

    def __init__(self, side: int, multiple: int) -> None:
        super().__init__()
        if side < multiple or side % multiple:
            raise ValueError(f"pixels {side} must be a multiple of the patch {multiple}")
        self.config = PixelFramesConfig(side, multiple)
        self.register_buffer("latent_shift", torch.zeros(3))  # frames are read as they are
        self.register_buffer("latent_scale", torch.ones(3))

    def latent_size(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(t, h, w) of what `encode` makes of a (frames, height, width) video."""
        scale, m = self.config.side / min(height, width), self.config.multiple
        return frames, max(m, m * round(height * scale / m)), max(m, m * round(width * scale / m))

    def encode(self, video: Tensor, **_) -> Tensor:
        """Frames `B 3 T H W` in [-1, 1] -> `B 3 T h w` at the reading size."""
        b, _, t, h, w = video.shape
        _, out_h, out_w = self.latent_size(t, h, w)
        frames = rearrange(video.float(), "b c t h w -> (b t) c h w")
        frames = nn.functional.interpolate(frames, size=(out_h, out_w), mode="bilinear",
                                           antialias=True, align_corners=False)  # fmt: skip
        return rearrange(frames.clamp(-1, 1), "(b t) c h w -> b c t h w", b=b)

    def moments(self, video: Tensor, **_) -> tuple[Tensor, Tensor]:
        """(`encode(video)`, log-variance -inf): exact, as the latent cache stores them."""
        x = self.encode(video)
        return x, torch.full_like(x, -torch.inf)


def spacetime_embedding(coords: Tensor, width: int) -> Tensor:
    """Sinusoidal embeddings (..., width) of integer (t, h, w) positions (..., 3), a third of
    the width per axis (zero-padded to `width`)."""
    per_axis = (width // 3) // 2 * 2
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(per_axis // 2, device=coords.device) / (per_axis // 2)
    )
    angles = coords[..., None].float() * freqs  # (..., 3, per_axis/2)
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # (..., 3*per_axis)
    return nn.functional.pad(emb, (0, width - emb.shape[-1]))


def _heads(attention: nn.MultiheadAttention, x: Tensor, part: int) -> Tensor:
    """Projection `part` (0 query, 1 key, 2 value) of x (B, S, D), split into heads
    (B, H, S, D/H)."""
    d = x.shape[-1]
    rows = slice(part * d, (part + 1) * d)
    y = nn.functional.linear(x, attention.in_proj_weight[rows], attention.in_proj_bias[rows])
    return rearrange(y, "b s (h e) -> b h s e", h=attention.num_heads)


def _attend(attention: nn.MultiheadAttention, x: Tensor, keys: Tensor, values: Tensor,
            mask: Tensor | None = None) -> Tensor:  # fmt: skip
    """`attention` of queries x (B, S, D) over projected keys and values (B, H, M, D/H)."""
    q = _heads(attention, x, 0)
    out = nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
    return attention.out_proj(rearrange(out, "b h s e -> b s (h e)"))


class _DecodeStep:
    """The decoder one token at a time: each layer keeps the keys and values of the tokens
    before (and projects the encoder's states once), so a caption of S words costs S
    one-token passes instead of S passes over all the words so far. Computes what
    `Captioner._decode` computes (pre-norm layers, no final decoder norm)."""

    def __init__(self, model: Captioner, memory: Tensor, pad: Tensor) -> None:
        self.model, self.position = model, 0
        self.layers = list(model.decoder.layers)
        self.memory = [(_heads(layer.multihead_attn, memory, 1),
                        _heads(layer.multihead_attn, memory, 2)) for layer in self.layers]  # fmt: skip
        self.memory_mask = ~pad[:, None, None, :]  # (B, 1, 1, M): True attends
        self.cache: list[tuple[Tensor, Tensor] | None] = [None] * len(self.layers)

    def __call__(self, token: Tensor) -> Tensor:
        """Next-token logits (B, V) after `token` (B,)."""
        m = self.model
        x = m.token_embed(token)[:, None] + m.token_pos.weight[self.position]  # (B, 1, D)
        self.position += 1
        for i, layer in enumerate(self.layers):
            h = layer.norm1(x)
            k, v = _heads(layer.self_attn, h, 1), _heads(layer.self_attn, h, 2)  # (B, H, 1, E)
            if self.cache[i] is not None:
                k, v = torch.cat([self.cache[i][0], k], 2), torch.cat([self.cache[i][1], v], 2)
            self.cache[i] = (k, v)
            x = x + _attend(layer.self_attn, h, k, v)
            x = x + _attend(layer.multihead_attn, layer.norm2(x), *self.memory[i],
                            mask=self.memory_mask)  # fmt: skip
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
        return m.head(m.norm(x))[:, 0]


class _DistinctObjects:
    """A world scene never holds two objects of one colour and shape, and its captions name
    each object once ("a small red circle ...") before referring back to it ("... the red
    circle"). A greedy decoder unsure of an object still names a likelier one a second time,
    which loses the object it missed; this bans, per caption, a shape word that would name an
    object already named, so the decoder's next choice for that object is taken instead."""

    def __init__(self, tokenizer: WordTokenizer, rows: int) -> None:
        self.vocab = tokenizer.vocab
        self.shapes = {w: i for w, i in tokenizer.index.items() if w in SHAPES}
        self.words: list[list[str]] = [[] for _ in range(rows)]
        self.named: list[set[tuple[str, str]]] = [set() for _ in range(rows)]

    def _naming(self, row: int) -> str | None:
        """The colour this caption has just written, if it is naming a new object (not "the
        red ..."), read as the world's caption parser reads it."""
        words = self.words[row]
        if words and words[-1] in COLORS and names_new_object(words[:-1]):
            return words[-1]
        return None

    def mask(self, logits: Tensor) -> Tensor:
        """`logits` (B, V) with already-named objects' shape words banned."""
        for row in range(len(self.words)):
            color = self._naming(row)
            if color is None:
                continue
            for shape, index in self.shapes.items():
                if (color, shape) in self.named[row]:
                    logits[row, index] = -torch.inf
        return logits

    def add(self, tokens: Tensor) -> None:
        """Record the words (B,) just written."""
        for row, token in enumerate(tokens.tolist()):
            word, color = self.vocab[token], self._naming(row)
            if color is not None and word in self.shapes:
                self.named[row].add((color, word))
            self.words[row].append(word)


def canvas_features(where: Tensor, pad: Tensor) -> Tensor:
    """Per token (B, M, 4): its row and column as fractions of its clip's grid (cell
    centres) and the grid's rows and columns / 16, from integer positions (B, M, 3) and
    padding (B, M)."""
    extent = (
        where.masked_fill(pad[..., None], 0).amax(dim=1, keepdim=True)[..., 1:] + 1
    )  # (B, 1, 2)
    fraction = (where[..., 1:] + 0.5) / extent  # (B, M, 2)
    return torch.cat([fraction, (extent / 16).expand_as(fraction)], dim=-1).float()


class Captioner(nn.Module):
    """Latent video -> caption tokens (see the module docstring)."""

    def __init__(self, config: CaptionerConfig) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = WordTokenizer(config.vocab)
        self.meta: dict = {}  # what it was trained on ("vae": the VAE its latents came from)
        d, (pt, ph, pw) = config.width, config.patch
        self.stem, features = None, config.latent_channels * ph * pw
        if config.stem:
            layers, channels = [], config.latent_channels
            for k in range(int(math.log2(ph))):
                layers += [nn.Conv2d(channels, config.stem << k, 3, stride=2, padding=1),
                           nn.GELU()]  # fmt: skip
                channels = config.stem << k
            self.stem, features = nn.Sequential(*layers), channels
        self.patch_embed = nn.Linear(features * pt, d)
        self.canvas_embed = nn.Linear(4, d) if config.canvas_features else None
        self.object_heads = (
            nn.ModuleDict({name: nn.Linear(d, len(c)) for name, c in OBJECT_CLASSES.items()})
            if config.object_heads else None
        )  # fmt: skip
        # (x, y) of the start, then (dx, dy) per frame
        self.track_head = nn.Linear(d, 2 + 2 * TRACK_FRAMES) if config.track_head else None
        layer = dict(d_model=d, nhead=config.heads, dim_feedforward=4 * d, dropout=0.0,
                     batch_first=True, norm_first=True)  # fmt: skip
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(**layer), config.encoder_layers, enable_nested_tensor=False
        )
        self.token_embed = nn.Embedding(len(config.vocab), d)
        self.token_pos = nn.Embedding(config.max_tokens, d)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer),
                                             config.decoder_layers)  # fmt: skip
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, len(config.vocab))

    def frames_read(self) -> int:
        """How many video frames the encoder reads (the first ones of a clip)."""
        if self.config.pixels:
            return self.config.max_latent_frames
        return 1 + 4 * (self.config.max_latent_frames - 1)  # the VAE codes 1, then groups of 4

    def tokens_read(self, latent: Tensor) -> int:
        """How many tokens the encoder reads of a latent (c, t, h, w)."""
        pt, ph, pw = self.config.patch
        _, t, h, w = latent.shape
        return -(-min(t, self.config.max_latent_frames) // pt) * (h // ph) * (w // pw)

    def encode(self, latents: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Encoder states (B, M, D) of latents (c, t, h, w) each, and their padding (B, M)."""
        pt, ph, pw = self.config.patch
        tokens, coords = [], []
        for z in latents:
            if z.shape[0] != self.config.latent_channels:
                raise ValueError(
                    f"this captioner reads {self.config.latent_channels}-channel latents, got "
                    f"{z.shape[0]}; encode with the VAE it was trained on ({self.meta.get('vae')})"
                )
            z = z[:, : self.config.max_latent_frames]
            if z.shape[1] % pt:  # the last frame repeated to fill the last temporal patch
                z = torch.cat([z, z[:, -1:].expand(-1, pt - z.shape[1] % pt, -1, -1)], dim=1)
            _, t, h, w = z.shape
            b, e = ph, pw
            if self.stem is not None:  # each frame's last map, one cell a token
                z = rearrange(self.stem(rearrange(z, "c t h w -> t c h w")), "t c h w -> c t h w")
                z, b, e = z[:, :, : h // ph, : w // pw], 1, 1
            grid = rearrange(z, "c (t a) (h b) (w e) -> (t h w) (a b e c)", a=pt, b=b, e=e)
            where = torch.stack(torch.meshgrid(torch.arange(t // pt), torch.arange(h // ph),
                                               torch.arange(w // pw), indexing="ij"), -1)  # fmt: skip
            tokens.append(grid)
            coords.append(where.reshape(-1, 3).to(z.device))
        longest = max(len(x) for x in tokens)
        x = torch.stack([nn.functional.pad(g, (0, 0, 0, longest - len(g))) for g in tokens])
        where = torch.stack([nn.functional.pad(c, (0, 0, 0, longest - len(c))) for c in coords])
        pad = torch.stack([torch.arange(longest, device=x.device) >= len(g) for g in tokens])
        h = self.patch_embed(x) + spacetime_embedding(where, self.config.width)  # (B, M, D)
        if self.canvas_embed is not None:
            h = h + self.canvas_embed(canvas_features(where, pad))
        return self.encoder(h, src_key_padding_mask=pad), pad

    def forward(self, latents: list[Tensor], tokens: Tensor,
                objects: tuple[Tensor, Tensor] | None = None) -> Tensor | tuple[Tensor, dict]:  # fmt: skip
        """Next-token logits (B, S, V) for caption tokens (B, S) (teacher forcing); with
        `objects`, (clip, token) positions (N,) each, also the object heads' logits
        {attribute: (N, classes)} at those encoder tokens, and with a track head its
        track {"track": (N, 2 + 2 * TRACK_FRAMES)} there."""
        memory, pad = self.encode(latents)
        logits = self._decode(tokens, memory, pad)
        if objects is None:
            return logits
        if self.object_heads is None:
            raise ValueError("this captioner has no object heads (train it with --object-loss)")
        states = memory[objects[0], objects[1]]  # (N, D)
        named = {name: head(states) for name, head in self.object_heads.items()}
        if self.track_head is not None:
            named["track"] = self.track_head(states)
        return logits, named

    def object_token(self, latent: Tensor, x: float, y: float) -> int:
        """The encoder position of the first-frame token holding the point (x, y), fractions
        of the width and height, in a latent (c, t, h, w)."""
        _, _, h, w = latent.shape
        rows, columns = h // self.config.patch[1], w // self.config.patch[2]
        return min(int(y * rows), rows - 1) * columns + min(int(x * columns), columns - 1)

    def _decode(self, tokens: Tensor, memory: Tensor, pad: Tensor) -> Tensor:
        s = tokens.shape[1]
        positions = torch.arange(s, device=tokens.device)
        h = self.token_embed(tokens) + self.token_pos(positions)  # (B, S, D)
        causal = torch.ones(s, s, dtype=torch.bool, device=tokens.device).triu(1)  # True: hidden
        h = self.decoder(h, memory, tgt_mask=causal, tgt_is_causal=True,
                         tgt_key_padding_mask=tokens == 0, memory_key_padding_mask=pad)  # fmt: skip
        return self.head(self.norm(h))  # (B, S, V)

    @torch.inference_mode()
    def caption(self, latents: list[Tensor]) -> list[str]:
        """Greedy captions of latents (c, t, h, w), each object named once."""
        memory, pad = self.encode(latents)
        bos, eos = self.tokenizer.index[BOS], self.tokenizer.index[EOS]
        step = _DecodeStep(self, memory, pad)
        distinct = _DistinctObjects(self.tokenizer, len(latents))
        tokens = [torch.full((len(latents),), bos, device=memory.device)]
        done = torch.zeros(len(latents), dtype=torch.bool, device=memory.device)
        for _ in range(self.config.max_tokens - 1):
            tokens.append(distinct.mask(step(tokens[-1])).argmax(-1))  # (B,)
            distinct.add(tokens[-1])
            done |= tokens[-1] == eos
            if done.all():
                break
        return [self.tokenizer.decode(row.tolist()) for row in torch.stack(tokens, dim=1)]

    def save(self, folder: str | os.PathLike, meta: dict | None = None) -> Path:
        return save_model(folder, self, self.config, meta=meta or {})

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Captioner:
        """The captioner in a model folder or the run folder of `kinetoscope train-captioner`
        (`resolve_model_folder`). Its meta's `vae`, a bundled name or a path relative to the
        model folder, comes back usable from here."""
        folder = resolve_model_folder(folder)
        model = cls(load_config(folder, CaptionerConfig))
        load_weights(folder, model)
        model.meta = load_meta(folder)
        vae = model.meta.get("vae")
        # (Older metas held the path as given on the command line: kept where it is not one.)
        if isinstance(vae, str) and vae not in BUNDLED and (folder / vae).is_dir():
            model.meta["vae"] = os.path.normpath(folder / vae)
        return model.eval()

    @classmethod
    def load_bundled(cls) -> Captioner:
        """The bundled world captioner; ValueError when this installation has none."""
        if not (BUNDLED_CAPTIONER / "config.json").is_file():
            raise ValueError(
                "this installation has no bundled captioner; train one with `kinetoscope "
                "train-captioner` and pass its run folder (--model RUN)"
            )
        return cls.load(BUNDLED_CAPTIONER)


__all__ = [
    "OBJECT_CLASSES",
    "TRACK_FRAMES",
    "Captioner",
    "CaptionerConfig",
    "PixelFrames",
    "WordTokenizer",
    "canvas_features",
    "spacetime_embedding",
]
