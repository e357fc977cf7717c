"""Train the video captioner on world clips and their ground-truth captions.

    train_captioner("world/manifest.jsonl", "runs/captioner", steps=3000)
    torchrun --nproc_per_node=2 -m kinetoscope train-captioner ...   # the same loop, DDP

The clips are encoded once by the frozen VAE, in fp32, into the latent cache the DiT trainer
uses (share it with `cache=`; each rank encodes a share), and the captioner learns the `level`
captions (the long ones by default: every object's size, colour, shape, start region and motion,
and the background) by next-word cross-entropy. A step draws `batch` training clips from (seed,
step), whatever the world size (rank r takes those at r, r + world_size, ...); its loss is the
mean over the caption words of the whole batch. The last `holdout` clips are never trained on:
at the end the trained model captions them, the world's caption parser reads each caption back,
and the report gives the accuracy of every attribute against the clips' ground truth
(`caption_accuracy`).

Run folder (`train/skeleton.py`): config.json, checkpoint/ (model/: the captioner, what
`Captioner.load(out)` and `kinetoscope caption --model out` read; train_state/: what --resume
reads), metrics.jsonl, loss.png, and report.json.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kinetoscope.captioner import Captioner, CaptionerConfig, PixelFrames, WordTokenizer
from kinetoscope.captioner.model import OBJECT_CLASSES, TRACK_FRAMES
from kinetoscope.checkpoint import load_config, save_json
from kinetoscope.data.dataset import ClipDataset
from kinetoscope.data.world import parse_caption
from kinetoscope.data.world.captions import in_reading_order
from kinetoscope.nn import resolve_precision
from kinetoscope.train.distributed import CHECKPOINT, gradient_sync
from kinetoscope.train.latents import LatentCache
from kinetoscope.train.skeleton import Run, check_run_config, configure, open_run
from kinetoscope.vae import BUNDLED, VideoVAE, load_vae

# What a captioner run writes besides the skeleton's files; "captioner" is where runs from
# before the skeleton exported the model (`overwrite` deletes it too).
RUN_FILES = ("report.json", "captioner")
# Fields that fix the clips and draws of each step: a resumed run must keep them.
RESUME_FIELDS = (
    "seed",
    "batch",
    "level",
    "width",
    "layers",
    "encoder_layers",
    "object_loss",
    "track_loss",
    "patch",
    "max_area",
    "max_frames",
    "holdout",
    "pixels",
    "stem",
)
ATTRIBUTES = ("count", "color", "shape", "size", "motion", "background", "region")
_OBJECT_ATTRIBUTES = ("color", "shape", "size", "motion", "region")  # each a truth key too


@dataclass
class CaptionerTrainConfig:
    """How the captioner trains; each default with its reason."""

    steps: int = 3000  # optimizer steps in all (the schedule's length)
    batch: int = 32  # clips a step, over all ranks: latents are small (tens of tokens)
    lr: float = 1e-3  # AdamW peak rate, as the captioner has trained
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW defaults
    weight_decay: float = 0.01  # AdamW's default, as the captioner has trained
    warmup: int = 200  # linear warm-up steps: Adam's first moment estimates are noisy
    schedule: str = "cosine"  # warm-up then cosine decay, as the captioner has trained
    final_lr_scale: float = 0.0  # the cosine ends at zero, as the captioner has trained
    grad_clip: float = 1.0  # max global gradient norm; rare spikes stay harmless
    level: str = "long"  # the most descriptive ground truth: start regions and motions too
    width: int = 256  # model width (CaptionerConfig's)
    layers: int = 3  # encoder and decoder each
    # Encoder layers, where not `layers` (0: as `layers`). With `init`, more than its own
    # appends layers that start as the identity (their output projections zero): the
    # fine-tune starts from its captions with more depth to read the video.
    encoder_layers: int = 0
    # Weight of the object heads' loss (`CaptionerConfig.object_heads`; 0: no heads): each
    # attribute of each object weighs as much as this many caption words. A caption spends
    # one word of about a hundred on an object's motion; the heads ask the encoder for every
    # object's attributes at the token where it starts.
    object_loss: float = 0.0
    # Weight of the track head's loss (`CaptionerConfig.track_head`; 0: none; needs the
    # object heads): each object's start point and displacement at each of its next 16
    # frames, named at the token where it starts, weigh as this many caption words. Motion
    # words name the first direction only, which in crowded scenes a collision soon hides; the
    # track asks the encoder to place every object and follow it frame by frame.
    track_loss: float = 0.0
    # Spatial patch side in latent pixels: 2 reads 16x16-pixel tokens as the DiT's mini
    # preset does; 1 reads 8x8-pixel ones (4x the tokens), which made the DiT learn colour,
    # shape and size faster per minute (mini-fine); not yet measured for the captioner.
    patch: int = 2
    # 0: read the VAE's latents. S > 0: read the RGB frames resized so the shorter side is S
    # px (`PixelFrames`): each of the first 17 frames, in tokens of 2 frames x `patch` x
    # `patch` pixels (then a pixel count: 8 at 64 px reads 8 x 8 tokens a frame pair of a
    # square canvas). The cache then holds those frames instead of latents.
    pixels: int = 0
    # Channels of a convolutional stem over each frame of a captioner of pixels (0: none; a
    # token's pixels then go through one linear layer): see `CaptionerConfig.stem`.
    stem: int = 0
    max_area: int = 256 * 256  # as the DiT trainer's, so the two share the latent cache
    max_frames: int = 49  # as the world model's DiT run: the two then share latents
    holdout: int = 200  # last clips of the manifest, never trained on, for the report
    # Padded encoder tokens a pass: a step's clips, sorted by length, run in passes of about
    # this many (gradients add up), so small clips do not pad to the step's largest. A step of
    # the default mix (canvases of 32 to 256 px) on 2 CPU threads runs 4.3x faster than in one
    # pass (`benchmarks/bench_captioner_step.py`: 1,024 gave 4.8x, 4,096 3.8x).
    pass_tokens: int = 2048
    precision: str = "auto"  # bf16 autocast where bf16 is fast (GPUs, AVX512-BF16/AMX CPUs)
    # Under torchrun: "ddp" keeps the whole model on each rank; "fsdp" shards it. One process
    # trains the bare model either way.
    parallel: str = "ddp"
    seed: int = 0  # init, the clips of each step
    # A captioner (model or run folder) whose weights and vocabulary start the run: fine-tune
    # it, with a new optimizer; width, layers and patch are then its own.
    init: str | None = None
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end)
    threads: int | None = None  # CPU threads (torch.set_num_threads); None: torch's default
    device: str | None = None  # "cpu", "cuda", "cuda:1"; None: this rank's GPU if any
    max_nonfinite_steps: int = 20  # non-finite steps in a row before the run stops

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        self.init = None if self.init is None else str(self.init)  # a folder may come as a Path
        check_run_config(self)
        if min(self.batch, self.width, self.layers, self.patch, self.pass_tokens) < 1:
            raise ValueError("batch, width, layers, patch and pass_tokens must be at least 1")
        if self.holdout < 0:
            raise ValueError(f"holdout must be >= 0, got {self.holdout}")
        if min(self.encoder_layers, self.object_loss, self.track_loss) < 0:
            raise ValueError("encoder_layers, object_loss and track_loss must be >= 0, got "
                             f"{self.encoder_layers}, {self.object_loss} and {self.track_loss}")  # fmt: skip
        if self.track_loss and not self.object_loss:
            raise ValueError("--track-loss trains a head beside the object heads: pass "
                             "--object-loss too")  # fmt: skip
        if self.stem and not self.pixels:
            raise ValueError("a stem reads frames: pass --pixels as well as --stem")
        if self.pixels % self.patch:
            raise ValueError(f"--pixels {self.pixels} must be a multiple of --patch {self.patch}")
        if self.stem and self.patch & (self.patch - 1):
            raise ValueError(f"a stem halves each frame: --patch must be 2, 4, 8, ..., got "
                             f"{self.patch}")  # fmt: skip


def caption_accuracy(captions: list[str], truths: list[dict]) -> dict[str, float]:
    """Share of correct attributes of generated captions against ground-truth dicts (the
    world's truth files): count; per object colour, shape, size, motion (videos only) and
    start region; and the background. A caption names a set of objects in whatever order, so
    each truth object is compared with the caption object of the pairing (one to one) that
    gets the most attributes right; a truth object left unpaired gets none right."""
    right = {name: [] for name in ATTRIBUTES}
    for caption, truth in zip(captions, truths, strict=True):
        parsed = parse_caption(caption)
        objects = truth["objects"]
        right["count"].append(len(parsed.objects) == len(objects))
        right["background"].append(parsed.background == truth["canvas"]["background"])
        names = [name for name in _OBJECT_ATTRIBUTES if name != "motion" or truth["frames"] > 1]
        found = parsed.objects + [None] * (len(objects) - len(parsed.objects))  # None: unpaired
        hits = [[[f is not None and getattr(f, name) == obj[name] for name in names] for f in found]
                for obj in objects]  # fmt: skip
        pairing = max(itertools.permutations(range(len(found)), len(objects)),
                      key=lambda p: sum(sum(row[j]) for row, j in zip(hits, p, strict=True)))  # fmt: skip
        for row, j in zip(hits, pairing, strict=True):
            for name, hit in zip(names, row[j], strict=True):
                right[name].append(hit)
    return {
        name: float(np.mean(values)) if values else float("nan") for name, values in right.items()
    }


def _target_caption(dataset: ClipDataset, index: int) -> str:
    """What the captioner learns to write for clip `index`: its caption, with a world clip's
    objects in reading order (`in_reading_order`)."""
    caption, truth = dataset.caption(index), dataset.records[index].truth
    if not caption or truth is None:
        return caption
    return in_reading_order(caption, json.loads(Path(truth).read_text())["objects"])


def _batch(model: Captioner, tokens: list[list[int]]) -> torch.Tensor:
    longest = min(max(map(len, tokens)), model.config.max_tokens)
    return torch.tensor([ids[:longest] + [0] * (longest - len(ids[:longest])) for ids in tokens])


def train_captioner(
    data: str | os.PathLike,
    out: str | os.PathLike,
    config: CaptionerTrainConfig | None = None,
    *,
    vae: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
    **overrides,
) -> dict:
    """Train, then report on the held-out clips (see the module docstring); keyword
    `overrides` replace fields of `config`. `vae`: a VAE folder, train-vae run or bundled name
    (default: the bundled world VAE). Returns the report (and the run's summary) on every
    rank; a call that stops at `stop_at` returns {"steps": N, "stopped": True}."""
    config = configure(CaptionerTrainConfig, config, overrides)
    if config.pixels and vae is not None:
        raise ValueError(f"--pixels reads the frames, not a VAE's latents: drop --vae {vae}")
    if resume and (Path(out) / CHECKPOINT / "state.json").is_file():
        raise ValueError(
            f"{out} was written by an earlier train-captioner, which cannot --resume; its "
            f"model still loads (caption --model {out}); start a new --out"
        )
    with open_run(out, config, name="train-captioner", data=data, resume=resume,
                  overwrite=overwrite, run_files=RUN_FILES, resume_fields=RESUME_FIELDS,
                  progress=progress) as run:  # fmt: skip
        cache = Path(cache) if cache is not None else run.out / "cache"
        return _train(run, Path(data), vae, cache, stop_at)


def _train(run: Run, data: Path, vae: str | os.PathLike | None, cache: Path, stop_at) -> dict:
    config, ddp, device = run.config, run.ddp, run.device
    # 1. Latents (or resized frames) of every clip in the cache (each rank encodes a share),
    #    and their captions.
    if config.pixels:
        vae_model = PixelFrames(config.pixels, config.patch).to(device)
    else:
        vae_model = load_vae("world" if vae is None else vae).to(device).requires_grad_(False)
    dataset = ClipDataset(data, max_area=config.max_area, max_frames=config.max_frames,
                          caption_level=config.level, temporal_crop="start", seed=config.seed)  # fmt: skip
    precision = ddp.agree(resolve_precision(config.precision, device) if run.main else None)
    # Latents are encoded in fp32 whatever the run's precision: `caption` reads fp32 latents,
    # and no diffusion noise hides the 1% that bf16 encoding changes.
    latents = LatentCache(dataset, vae_model, cache / "latents", "fp32")
    cached = latents.fill_over_ranks(ddp, device, run.progress)
    if len(cached) <= config.holdout:
        raise ValueError(f"{len(cached)} clips cached; need more than --holdout {config.holdout}")
    train_ids, held_ids = cached[: -config.holdout or None], cached[len(cached) - config.holdout :]
    captions = {i: _target_caption(dataset, i) for i in cached}
    if any(not captions[i] for i in train_ids):
        raise ValueError(f"some clips of {data} have no {config.level!r} caption")
    if min(config.batch, len(train_ids)) < ddp.world_size:
        raise ValueError(f"a step of {config.batch} clips cannot feed {ddp.world_size} ranks")

    # 2. The model: the checkpoint's (its vocabulary too), the one to fine-tune, or one over
    #    the training captions' words (seeded: every rank builds the same).
    if run.checkpoint is not None:
        model = Captioner(load_config(run.checkpoint / "model", CaptionerConfig))
    elif config.init is not None:
        torch.manual_seed(config.seed)
        model = _captioner_to_fine_tune(config, [captions[i] for i in train_ids], vae_model)
    else:
        tokenizer = WordTokenizer.fit([captions[i] for i in train_ids])
        torch.manual_seed(config.seed)
        model = Captioner(CaptionerConfig(
            vocab=tokenizer.vocab, width=config.width,
            encoder_layers=config.encoder_layers or config.layers,
            object_heads=config.object_loss > 0, track_head=config.track_loss > 0,
            decoder_layers=config.layers, canvas_features=True,
            **_input_fields(config, vae_model)))  # fmt: skip
    net = run.attach(model.to(device).train(), precision=precision)
    named = vae is None or str(vae) in BUNDLED
    run.meta = {"data": run.portable(data), "level": config.level, "train": asdict(config),
                "vae": ("world" if vae is None else str(vae)) if named else run.portable(vae)}  # fmt: skip
    if config.pixels:
        run.meta["vae"] = None  # it reads frames: no VAE to name
    tokens = {i: model.tokenizer.encode(captions[i]) for i in train_ids}
    objects = {i: _object_targets(dataset, i) for i in train_ids} if config.object_loss else None
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16")

    # 3. The loop.
    while run.step < config.steps:
        if run.stopping(stop_at):
            return run.stopped()
        run.begin_step()
        draws = np.random.default_rng([config.seed, run.step])
        chosen = draws.choice(train_ids, size=min(config.batch, len(train_ids)), replace=False)
        mine = [int(i) for i in chosen[ddp.rank :: ddp.world_size]]
        batch = _batch(model, [tokens[i] for i in mine]).to(device)  # (B, S)
        # Every caption word of the global batch weighs the same; DDP and FSDP average the
        # ranks' gradients, hence the world size.
        words = float(ddp.all_reduce((batch[:, 1:] != 0).sum().double()))
        clips = [latents.load(i).to(device) for i in mine]
        passes = _passes([model.tokens_read(z) for z in clips], config.pass_tokens)
        # Every rank runs as many passes (FSDP gathers the weights in each): one with fewer
        # repeats its last pass at weight 0.
        count = int(ddp.all_reduce(torch.tensor(len(passes), device=device), "max"))
        heads = None
        if objects is not None:  # (token, classes, track) of each object of each clip
            heads = [[(model.object_token(z, x, y), *targets) for x, y, *targets in objects[i]]
                     for z, i in zip(clips, mine, strict=True)]  # fmt: skip
        total, head_totals = backward_in_passes(
            net, clips, batch, passes, count, ddp.world_size / words, autocast,
            objects=heads, object_weight=config.object_loss, track_weight=config.track_loss,
        )  # fmt: skip
        loss = float(ddp.all_reduce(total.double())) / words
        run.update(math.isfinite(loss))
        row = {"clips": len(chosen)}
        if objects is not None:  # the heads' mean loss per object attribute (and track)
            named = max(1.0, float(ddp.all_reduce(torch.tensor(float(sum(map(len, heads))),
                                                                device=device))))  # fmt: skip
            object_total, track_total = (float(ddp.all_reduce(x.double())) for x in head_totals)
            row["object_loss"] = object_total / (named * len(OBJECT_CLASSES))
            if config.track_loss:
                row["track_loss"] = track_total / named
        run.log(run.end_step(loss, row))
        run.save_if_due()

    # 4. The report on the held-out clips, from the whole model on rank 0.
    report = {"step": run.step, "clips": len(train_ids), "heldout": len(held_ids)}
    report |= run.measure(
        lambda whole: evaluate_captioner(whole.eval(), latents, dataset, held_ids)
    )
    if run.main:
        save_json(run.out / "report.json", report)
    return run.summary(**report)


def _passes(lengths: list[int], budget: int) -> list[list[int]]:
    """Positions of `lengths` sorted by length and cut into runs whose padded size (clips x
    the run's longest) stays within `budget` tokens; a clip longer than that runs alone."""
    runs: list[list[int]] = [[]]
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if runs[-1] and (len(runs[-1]) + 1) * lengths[i] > budget:
            runs.append([])
        runs[-1].append(i)
    return runs


def backward_in_passes(net: nn.Module, clips: list[torch.Tensor], batch: torch.Tensor,
                       passes: list[list[int]], count: int, scale: float,
                       autocast: contextlib.AbstractContextManager,
                       objects: list[list[tuple[int, list[int], list[float]]]] | None = None,
                       object_weight: float = 0.0, track_weight: float = 0.0,
                       ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """Forward and backward of a step's `clips` (latents) and caption tokens `batch` (B, S) in
    `passes` (`_passes`), each pass's summed word loss times `scale` (backward adds the
    gradients). With `objects`, each clip's (encoder token, class per `OBJECT_CLASSES`, -1:
    none; track per `_object_targets`) of every object, the object heads' summed loss times
    `object_weight` is added, and with a track head its summed loss times `track_weight`.
    Runs `count` passes, repeating the last at weight 0 past `len(passes)`, so every rank
    runs as many; gradients are reduced over ranks on the last. Returns the summed word loss
    and (object loss, track loss), detached."""
    targets = batch[:, 1:]
    total = torch.zeros((), device=batch.device)
    head_totals = torch.zeros(2, device=batch.device)
    for k in range(count):
        rows, live = passes[min(k, len(passes) - 1)], k < len(passes)
        where = None if objects is None else _object_batch(objects, rows, batch.device)
        with gradient_sync(net, enabled=k == count - 1):
            with autocast:
                out = net([clips[j] for j in rows], batch[rows, :-1], *where[:1] if where else ())
            logits, named = out if where is not None else (out, None)  # (b, S-1, V)
            part = nn.functional.cross_entropy(logits.float().flatten(0, 1),
                                               targets[rows].flatten(), ignore_index=0,
                                               reduction="sum") * live  # fmt: skip
            losses = _object_loss(named, *where[1:]) * live if named else head_totals * 0
            ((part + object_weight * losses[0] + track_weight * losses[1]) * scale).backward()
        total += part.detach()
        head_totals += losses.detach()
    return total, (head_totals[0], head_totals[1])


# The track loss compares each frame's displacement divided by its frame number (the mean
# velocity since the start, in shorter sides a frame), so the first steps, which a motion word
# names, weigh as much as the far ones, whose errors grow with the distance. It is a Huber loss
# with this knee (a third of a typical frame's move), divided by it: an object whose track is
# off by this much costs about as much as a word the decoder was unsure of.
_TRACK_KNEE = 0.02
_TRACK_STEPS = torch.tensor(
    [1.0, 1.0] + [float(k) for k in range(1, TRACK_FRAMES + 1) for _ in "xy"]
)


def _object_loss(named: dict[str, torch.Tensor], classes: torch.Tensor,
                 tracks: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """(Summed cross-entropy of the object heads' logits {attribute: (N, classes)} against
    `classes` (N, attributes in `OBJECT_CLASSES` order; -1 is ignored), summed track loss of
    each object (`_TRACK_KNEE`: the mean over its known values, each frame's displacement divided
    by its frame number; 0 without a "track" head)
    against `tracks` (N, 2 + 2 * TRACK_FRAMES; NaN: unknown))."""
    class_loss = sum(
        nn.functional.cross_entropy(
            named[name].float(), classes[:, a], ignore_index=-1, reduction="sum"
        )
        for a, name in enumerate(OBJECT_CLASSES)
    )
    track_loss = torch.zeros_like(class_loss)
    if "track" in named:
        known = ~tracks.isnan()  # (N, 2 + 2F)
        steps = _TRACK_STEPS.to(tracks.device)  # (2 + 2F,): 1 for the start, then k at frame k
        error = nn.functional.smooth_l1_loss(named["track"].float() / steps,
                                             tracks.nan_to_num() / steps,
                                             beta=_TRACK_KNEE, reduction="none")  # fmt: skip
        per_object = (error * known).sum(-1) / known.sum(-1).clamp(min=1) / _TRACK_KNEE
        track_loss = per_object.sum()
    return torch.stack([class_loss, track_loss])


def _object_batch(objects: list[list[tuple[int, list[int], list[float]]]], rows: list[int],
                  device: torch.device,
                  ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor, torch.Tensor]:  # fmt: skip
    """((clip in pass, token) positions (N,) each, classes (N, attributes), tracks (N, 2 + 2 *
    TRACK_FRAMES)) of the objects of clips `rows`."""
    found = [(r, token, classes, track)
             for r, j in enumerate(rows) for token, classes, track in objects[j]]  # fmt: skip
    if not found:  # no objects in this pass: one position, every class and track unknown
        found = [(0, 0, [-1] * len(OBJECT_CLASSES), [math.nan] * (2 + 2 * TRACK_FRAMES))]
    clip, token, classes, tracks = zip(*found, strict=True)
    positions = (torch.tensor(clip, device=device), torch.tensor(token, device=device))
    return positions, torch.tensor(classes, device=device), torch.tensor(tracks, device=device)


def _object_targets(dataset: ClipDataset,
                    index: int) -> list[tuple[float, float, list[int], list[float]]]:  # fmt: skip
    """(x, y, class per `OBJECT_CLASSES`, track) of each object of clip `index`: where its
    centre starts, as fractions of the canvas, its attributes (motion -1, none, in an image)
    and its track: (x, y) again, then (dx, dy) of its centre from there at each of the next
    `TRACK_FRAMES` frames, in shorter sides (NaN past the clip's end)."""
    record = dataset.records[index]
    if record.truth is None:
        raise ValueError(f"--object-loss reads world clips' truth files; {record.path} has none")
    truth = json.loads(Path(record.truth).read_text())
    short = min(truth["canvas"]["width"], truth["canvas"]["height"])
    found = []
    for o, track in zip(truth["objects"], truth["tracks"], strict=True):
        classes = [names.index(o[name]) if name != "motion" or truth["frames"] > 1 else -1
                   for name, names in OBJECT_CLASSES.items()]  # fmt: skip
        (x0, y0), *later = track["position"][: 1 + TRACK_FRAMES]
        moved = [((x - x0) / short, (y - y0) / short) for x, y in later]
        moved += [(math.nan, math.nan)] * (TRACK_FRAMES - len(moved))
        found.append((*o["start"], classes, [*o["start"], *(v for xy in moved for v in xy)]))
    return found


def _input_fields(config: CaptionerTrainConfig, vae: VideoVAE | PixelFrames) -> dict:
    """The `CaptionerConfig` fields of what a new captioner reads: `vae`'s latents in tokens
    of 1 x patch x patch, or frames (the first 17) in tokens of 2 x patch x patch pixels."""
    fields = {"pixels": config.pixels, "latent_channels": vae.config.latent_channels}
    if config.pixels:
        return fields | {"max_latent_frames": 17, "patch": (2, config.patch, config.patch),
                         "stem": config.stem}  # fmt: skip
    return fields | {"patch": (1, config.patch, config.patch)}


def _captioner_to_fine_tune(config: CaptionerTrainConfig, captions: list[str],
                            vae: VideoVAE | PixelFrames) -> Captioner:  # fmt: skip
    """The captioner of `config.init` to fine-tune; ValueError if it cannot write these
    captions or read this VAE's latents. A captioner of latents starts one of pixels
    (`--pixels`): every weight carries over but the patch embedding, which starts anew."""
    folder = config.init
    model = Captioner.load(Path(folder).expanduser()).train()
    unknown = sorted(
        {w for c in captions for w in WordTokenizer.words(c)} - set(model.tokenizer.vocab)
    )
    if unknown:
        raise ValueError(
            f"--init {folder} does not know the words {', '.join(unknown[:8])} of these "
            "captions; train a new captioner on them instead"
        )
    if config.pixels and not model.config.pixels:
        pixel_model = Captioner(replace(model.config, **_input_fields(config, vae))).train()
        weights = {k: v for k, v in model.state_dict().items() if not k.startswith("patch_embed")}
        pixel_model.load_state_dict(weights, strict=False)
        pixel_model.meta = model.meta
        return _grown(pixel_model, config, folder)
    if config.pixels != model.config.pixels:
        reads = f"{model.config.pixels}-px frames" if model.config.pixels else "latents"
        raise ValueError(f"--init {folder} reads {reads}; pass --pixels "
                         f"{model.config.pixels} to fine-tune it")  # fmt: skip
    if model.config.latent_channels != vae.config.latent_channels:
        raise ValueError(
            f"--init {folder} reads {model.config.latent_channels}-channel latents, this VAE "
            f"gives {vae.config.latent_channels}"
        )
    return _grown(model, config, folder)


def _grown(model: Captioner, config: CaptionerTrainConfig, folder: str) -> Captioner:
    """`model` with what `config` adds to it: encoder layers up to `encoder_layers` (0: its
    own), appended after its own and each starting as the identity (pre-norm residual layers
    whose attention and feed-forward outputs are zero), object heads if and only if
    `object_loss` and a track head if and only if `track_loss` (they only train). Either way
    it captions exactly as before."""
    have = model.config.encoder_layers
    layers = config.encoder_layers or have
    if layers < have:
        raise ValueError(f"--init {folder} has {have} encoder layers; --encoder-layers "
                         f"{layers} cannot drop any (pass {have} or more)")  # fmt: skip
    heads, track = config.object_loss > 0, config.track_loss > 0
    if (layers, heads, track) == (have, model.config.object_heads, model.config.track_head):
        return model
    grown = Captioner(replace(model.config, encoder_layers=layers, object_heads=heads,
                              track_head=track)).train()  # fmt: skip
    grown.load_state_dict(model.state_dict(), strict=False)
    for layer in grown.encoder.layers[have:]:
        for output in (layer.self_attn.out_proj, layer.linear2):
            nn.init.zeros_(output.weight)
            nn.init.zeros_(output.bias)
    grown.meta = model.meta
    return grown


def evaluate_captioner(model: Captioner, latents: LatentCache, dataset: ClipDataset,
                       indices: list[int], batch: int = 32) -> dict:  # fmt: skip
    """Accuracy per attribute and clips/s of `model` on clips `indices` with truth files."""
    truths = []
    for i in indices:
        record = dataset.records[i]
        if record.truth is None:
            raise ValueError(f"{record.path} has no ground truth; evaluate on world clips")
        truths.append(json.loads(Path(record.truth).read_text()))
    device = next(model.parameters()).device
    start = time.perf_counter()
    captions = []
    for k in range(0, len(indices), batch):
        captions += model.caption([latents.load(i).to(device) for i in indices[k : k + batch]])
    seconds = time.perf_counter() - start
    accuracy = caption_accuracy(captions, truths)
    return {"accuracy": accuracy, "clips_per_second": len(indices) / seconds,
            "examples": captions[:5]}  # fmt: skip


__all__ = ["ATTRIBUTES", "CaptionerTrainConfig", "backward_in_passes", "caption_accuracy",
           "evaluate_captioner", "train_captioner"]  # fmt: skip
