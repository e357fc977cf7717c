"""The `kinetoscope` command: thin front ends that parse, call and print.

Each subcommand imports its implementation lazily so that `kinetoscope --help` stays instant.
Every output path is checked before any work. An expected failure (a user error, a file that
cannot be read or written, a corrupt weights file, running out of memory, an interrupted or
diverged run) ends with one line on stderr and a non-zero exit; a traceback is shown only
under `--debug` or for a bug.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import re
import sys
import time
import traceback
import warnings
from pathlib import Path

from kinetoscope.cli.evaluate import add_eval_command
from kinetoscope.cli.generate import add_generate_command
from kinetoscope.cli.options import _count, _DefaultsHelp, _names, _positive_int


def _world(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from kinetoscope.data.world import WORLD_MIXES, parse_exclude, write_world
    from kinetoscope.io import check_output_folder

    check_output_folder(args.out, "--out")

    if args.mix not in WORLD_MIXES:
        raise ValueError(f"unknown mix {args.mix!r}; choose one of {', '.join(WORLD_MIXES)}")
    given = {
        "min_side": args.min_side,
        "max_side": args.max_side,
        "aspect_ratios": tuple(args.aspect_ratios.split(",")) if args.aspect_ratios else None,
        "min_frames": args.min_frames,
        "max_frames": args.max_frames,
        "fps": args.fps,
        "start_room": args.start_room,
        "min_objects": args.min_objects,
        "max_objects": args.max_objects,
        "exclude": parse_exclude(args.exclude) if args.exclude is not None else None,
    }
    config = replace(WORLD_MIXES[args.mix], **{k: v for k, v in given.items() if v is not None})
    start = time.perf_counter()
    summary = write_world(
        Path(args.out), clips=args.clips, seed=args.seed, config=config, workers=args.workers
    )
    seconds = time.perf_counter() - start
    print(f"wrote {summary.clips} clips ({summary.frames} frames) in {seconds:.1f} s")
    print(f"manifest: {summary.manifest}")
    return 0


def _index(args: argparse.Namespace) -> int:
    from kinetoscope.data.index import index_folder

    report = index_folder(
        Path(args.folder),
        Path(args.out),
        captions=Path(args.captions) if args.captions else None,
        errors=Path(args.errors) if args.errors else None,
        workers=args.workers,
    )
    print(
        f"indexed {report.indexed} files ({report.uncaptioned} without a caption), "
        f"{report.failed} unreadable, {report.caption_errors} unusable captions, "
        f"{report.ignored} other files ignored"
    )
    print(f"manifest: {report.manifest}")
    if report.failed or report.caption_errors:
        print(f"problems and their reasons: {report.errors}")
    return 0


def _captioner(args: argparse.Namespace):
    """The captioner the options name: a vision endpoint (--endpoint, --model its model), else
    the trained captioner of --model (the bundled one without it), on --threads threads."""
    if args.endpoint:
        from kinetoscope.captioner.endpoint import EndpointCaptioner

        if not args.model:
            raise ValueError("--endpoint needs --model: the name the server serves its model under")
        return EndpointCaptioner(args.endpoint, args.model, frames=args.frames,
                                 timeout=args.timeout)  # fmt: skip
    import torch

    from kinetoscope.captioner import Captioner

    if args.threads:
        torch.set_num_threads(args.threads)
    return Captioner.load(args.model) if args.model else Captioner.load_bundled()


def _caption(args: argparse.Namespace) -> int:
    from kinetoscope.captioner.run import caption_files

    for path, text in caption_files(_captioner(args), args.videos):
        print(f"{path}: {text}")
    return 0


def _recaption(args: argparse.Namespace) -> int:
    from kinetoscope.captioner.run import recaption

    done = recaption(_captioner(args), args.manifest, args.out, progress=True)
    print(f"wrote {args.out}: {done['captioned']} clips captioned now, {done['kept']} kept "
          f"from before, {done['skipped']} unreadable")  # fmt: skip
    return 0


def _captioner_options(parser: argparse.ArgumentParser) -> None:
    """The options of `caption` and `recaption` that choose the captioner."""
    parser.add_argument("--model", help="captioner folder (default: the bundled one); with "
                        "--endpoint, the name of the endpoint's vision model")  # fmt: skip
    parser.add_argument("--endpoint", help="caption real footage with a vision model of this "
                        "OpenAI-compatible endpoint instead (a vLLM, llama.cpp or Ollama server, "
                        "e.g. http://localhost:8000/v1)")  # fmt: skip
    parser.add_argument("--frames", type=_positive_int, default=8,
                        help="frames sent per clip, spread over it (with --endpoint)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for each answer (with --endpoint)")  # fmt: skip
    parser.add_argument("--threads", type=_positive_int, help="torch CPU threads")


def _train_expander(args: argparse.Namespace) -> int:
    from kinetoscope.data.manifest import read_manifest
    from kinetoscope.io import check_output_folder
    from kinetoscope.text.expand import PromptExpander

    out = check_output_folder(args.out, "--out")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise ValueError(f"--out {out} already exists; pass --overwrite to replace it")
    records = read_manifest(args.data)
    captions = [text for record in records for text in record.captions.values()]
    expander = PromptExpander.fit(captions)
    meta = {"data": str(args.data), "records": len(records), "captions": len(captions),
            "command": "kinetoscope train-expander --data DATA --out OUT"}  # fmt: skip
    expander.save(out, meta=meta)
    print(f"counted the attributes of {len(captions)} captions of {len(records)} clips: {out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    try:
        from kinetoscope.web.app import serve
    except ImportError as error:
        raise ValueError(
            f"the demo needs the 'demo' extra ({error.name} is missing): pip install -e '.[demo]'"
        ) from None
    from kinetoscope.pipeline import Pipeline, resolve_device
    from kinetoscope.web.demo import Demo, Limits

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be from 1 to 65535, got {args.port}")
    if args.concurrency < 1:
        raise ValueError(f"--concurrency must be at least 1, got {args.concurrency}")
    limits = Limits(args.max_side, args.max_frames, args.max_steps)
    if min(limits.max_side, limits.max_frames, limits.max_steps) < 1:
        raise ValueError("--max-side, --max-frames and --max-steps must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = Pipeline.load(args.model, device=resolve_device(args.device))
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="kinetoscope-demo-"))
    print(f"results go to {out}")
    serve(Demo(pipe, out, limits), args.host, args.port, args.concurrency)
    return 0


# ---------------------------------------------------------------------------------------------
# Training: options read their defaults from the trainers' configs


class _ConfigDefault:
    """The default of an option that sets a field of a training config: the config's own,
    read when the help shows it (so building the parser imports no trainer). A run without
    the option passes nothing, and the config decides."""

    def __init__(self, config: str, name: str) -> None:
        self.config, self.name = config, name  # "module:Class", "field" or "field.subfield"

    def value(self) -> object:
        module, cls = self.config.split(":")
        value = getattr(importlib.import_module(module), cls)()
        for part in self.name.split("."):
            value = getattr(value, part)
        return value

    def __str__(self) -> str:
        value = self.value()
        # A tuple shows as it is typed: "first,prefix" (tuples of numbers as they are).
        if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
            return ",".join(value)
        return str(value)


VAE_CONFIG = "kinetoscope.train.vae:VAETrainConfig"
DIT_CONFIG = "kinetoscope.train.dit:DiTTrainConfig"
CAPTIONER_CONFIG = "kinetoscope.train.captioner:CaptionerTrainConfig"


def _config_option(
    parser: argparse.ArgumentParser, config: str, name: str, help: str, *flags: str, **kwargs
) -> None:
    """Option `--name` (or `flags`) for field `name` of `config`, its default the config's
    (shown in the help unless the option says what None or False means itself)."""
    shown = kwargs.pop("shown", True)
    flags = flags or ("--" + name.split(".")[-1].replace("_", "-"),)
    default = _ConfigDefault(config, name) if shown else None
    if kwargs.get("action") != "store_true" and "choices" not in kwargs:  # --mse-weight MSE_WEIGHT
        kwargs.setdefault("metavar", flags[0].lstrip("-").replace("-", "_").upper())
    parser.add_argument(*flags, dest=name, default=default, help=help, **kwargs)


def _overrides(args: argparse.Namespace, config: type) -> dict:
    """The fields of training config class `config` that the command line sets (an option
    for a nested config's field, "loss.mse_weight", replaces that field of its default)."""
    given = {key: value for key, value in vars(args).items()
             if value is not None and not isinstance(value, _ConfigDefault)}  # fmt: skip
    overrides = {}
    for field in dataclasses.fields(config):
        if field.name in given:
            overrides[field.name] = given[field.name]
        nested = {key.split(".", 1)[1]: value for key, value in given.items()
                  if key.startswith(field.name + ".")}  # fmt: skip
        if nested:
            overrides[field.name] = dataclasses.replace(getattr(config(), field.name), **nested)
    return overrides


def _common_train_options(parser: argparse.ArgumentParser, config: str) -> None:
    """The options every trainer takes: run folder, resume, schedule, seed, devices."""
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out (else an existing run is refused; a cache/ in it is kept)",
    )
    option = functools.partial(_config_option, parser, config)
    option("steps", "optimizer steps in all (the schedule's length)", type=_positive_int)
    option("lr", "peak learning rate (AdamW)", type=float)
    option("warmup", "linear warm-up steps", type=_count)
    option("schedule", "after the warm-up: a constant rate, or a cosine decay",
           choices=("constant", "cosine"))  # fmt: skip
    option("checkpoint_every", "steps between checkpoints (and one at the end)", type=_positive_int)
    option("seed", "seed of init, data order and every random draw", type=int)
    option("precision", "auto: bf16 autocast where it is fast (GPUs, CPUs with AVX512-BF16 or "
           "AMX)", choices=("auto", "bf16", "fp32"))  # fmt: skip
    option("parallel", "under torchrun: ddp copies the model to every rank, fsdp shards "
           "weights, gradients and optimizer state (FSDP2); one process trains the bare model "
           "either way", choices=("ddp", "fsdp"))  # fmt: skip
    option("threads", "torch CPU threads (default: torch's choice; use 1 on a machine busy with "
           "other jobs, where waiting threads slow every small op down)", type=_positive_int,
           shown=False)  # fmt: skip
    option("device", "cpu, cuda or cuda:N (default: the GPU if any; under torchrun each rank's)",
           shown=False)  # fmt: skip


def _train_vae(args: argparse.Namespace) -> int:
    from kinetoscope.train.vae import VAETrainConfig, train_vae

    summary = train_vae(args.data, args.out, resume=args.resume, overwrite=args.overwrite,
                        **_overrides(args, VAETrainConfig))  # fmt: skip
    if summary.get("stopped"):
        return 0
    psnr = summary.get("heldout_psnr")
    print(
        f"trained {summary['steps']} steps: final loss {summary['final_loss']:.5f}"
        + (f", held-out PSNR {psnr:.2f} dB" if psnr is not None else "")
        + f", {summary['frames_per_second']:.1f} frames/s, {summary['skipped']} clips skipped"
    )
    print(f"VAE: {summary['checkpoint']}/model (load it with --vae {args.out})")
    return 0


def _train(args: argparse.Namespace) -> int:
    from kinetoscope.train.dit import DiTTrainConfig, train_dit

    summary = train_dit(args.data, args.out, vae=args.vae, cache=args.cache, resume=args.resume,
                        overwrite=args.overwrite, **_overrides(args, DiTTrainConfig))  # fmt: skip
    if summary.get("stopped"):
        return 0
    print(
        f"trained {summary['steps']} steps: final loss {summary['final_loss']:.4f}, "
        f"{summary['tokens_per_second']:.0f} tokens/s, padding {summary['padding_fraction']:.1%}, "
        f"{summary['nonfinite_steps']} non-finite steps skipped, "
        f"{summary['skipped_clips']} clips skipped"
    )
    print(f"checkpoint: {summary['checkpoint']}")
    return 0


def _train_captioner(args: argparse.Namespace) -> int:
    from kinetoscope.train.captioner import CaptionerTrainConfig, train_captioner

    report = train_captioner(args.data, args.out, vae=args.vae, cache=args.cache,
                             resume=args.resume, overwrite=args.overwrite,
                             **_overrides(args, CaptionerTrainConfig))  # fmt: skip
    if report.get("stopped"):
        print(f"stopped at step {report['steps']}; continue with --resume")
        return 0
    accuracy = ", ".join(f"{k} {v:.1%}" for k, v in report["accuracy"].items())
    print(f"{report['heldout']} held-out clips: {accuracy}; "
          f"{report['clips_per_second']:.1f} clips/s")  # fmt: skip
    print(f"captioner: {args.out} (caption --model {args.out})")
    return 0


def _add_train_vae(sub) -> None:
    parser = sub.add_parser(
        "train-vae",
        help="train the causal video VAE on a manifest of clips",
        description="Train the causal video VAE on the clips of a manifest (random crops of "
        "native-size clips). Works unchanged under torchrun (--parallel ddp or fsdp). Writes "
        "config.json, checkpoint/ (the VAE in checkpoint/model, what --vae RUN reads; the "
        "training state --resume continues exactly), metrics.jsonl and loss.png to --out.",
        formatter_class=_DefaultsHelp,
    )
    parser.add_argument("--data", required=True, help="manifest.jsonl of training clips")
    _common_train_options(parser, VAE_CONFIG)
    option = functools.partial(_config_option, parser, VAE_CONFIG)
    option("preset", "VAE preset: tiny, world or base")
    option("batch", "clips per step trained as videos (over all ranks)", type=_positive_int)
    option("images", "single frames (cut from other clips) per step, on top of --batch videos",
           type=_count)  # fmt: skip
    option("image_steps", "first steps that train on single frames only (every clip gives one "
           "frame)", type=_count)  # fmt: skip
    option("crop", "random crop side (px, a multiple of 16)", type=_positive_int)
    option("max_area", "clip area cap (px)", type=_positive_int)
    option("max_frames", "frames per clip (1 + 4k); at least the length you will code: a "
           "decoded frame depends on the last 10 latent frames, and frames past the trained "
           "length come out badly", type=_positive_int)  # fmt: skip
    option("loss.l1_weight", "weight of the L1 pixel loss (sharp edges)", type=float)
    option("loss.mse_weight", "weight of the MSE pixel loss (what PSNR measures)", type=float)
    option("eval_every", "steps between held-out PSNR measurements", type=_positive_int)
    option("holdout", "clips at the manifest's end kept for PSNR", type=_count)
    option("init", "start from this VAE's weights (a folder, a train-vae run or 'world'; "
           "fine-tuning: new optimizer and schedule; --preset is then ignored)", metavar="VAE",
           shown=False)  # fmt: skip
    parser.set_defaults(run=_train_vae)


def _add_train(sub) -> None:
    parser = sub.add_parser(
        "train",
        help="train the text-conditioned diffusion transformer on a manifest",
        description="Encode clips with a VAE (cached on disk), pack them at native size and "
        "train a DiT with rectified flow. Works unchanged under torchrun (--parallel ddp or "
        "fsdp). Writes config.json, checkpoint/ (the EMA weights in checkpoint/ema, what "
        "generate --model RUN reads; a sharded training state that resumes at any world size), "
        "metrics.jsonl, loss.png, previews and the VAE to --out.",
        formatter_class=_DefaultsHelp,
    )
    parser.add_argument("--data", required=True, help="manifest.jsonl of captioned clips")
    parser.add_argument(
        "--vae", help="VAE folder or train-vae run (default: the bundled world VAE)"
    )
    parser.add_argument(
        "--cache",
        help="latent and text-embedding cache folder (default: RUN/cache); share it between "
        "runs of the same data and VAE so clips are encoded once",
    )
    _common_train_options(parser, DIT_CONFIG)
    option = functools.partial(_config_option, parser, DIT_CONFIG)
    option(
        "preset", "DiT preset (dit.DIT_PRESETS): tiny, mini-fine, mini, small, base, large or xl"
    )
    option("init", "model or run folder whose weights start the run (fine-tune it; new "
           "optimizer)", shown=False)  # fmt: skip
    option("max_frames", "frames per clip (1 + 4k)", type=_positive_int)
    option("max_area", "pixel area cap of a clip", type=_positive_int)
    option("token_budget", "tokens per packed sequence (default: the longest clip's)",
           type=_positive_int, shown=False)  # fmt: skip
    option("sequences_per_batch", "packed sequences per batch", "--sequences", type=_positive_int)
    option("accumulate", "batches per step on each rank (gradient accumulation); a step takes "
           "world size x accumulate batches, which a resumed run must keep", type=_positive_int)  # fmt: skip
    option("text_encoder", "tiny, minilm or a local Hugging Face folder (default: tiny for the "
           "tiny preset, else minilm)", shown=False)  # fmt: skip
    option("preview_every", "steps between previews (0: none)", type=_count)
    option("timestep_mean", "location of the logit-normal timestep density (above 0: more "
           "training at high noise, where layout and motion are decided)", type=float)  # fmt: skip
    option("caption_dropout", "empty-prompt rate (for classifier-free guidance)", type=float)
    option("given_prob", "rate of videos trained with clean given frames, a prefix or a suffix "
           "(what image-to-video and extension sample with)", type=float)  # fmt: skip
    option("given_masks", "comma-separated masks a video with given frames draws from: "
           "first, prefix, suffix, ends, middle (list one twice to draw it twice as often)",
           type=_names)  # fmt: skip
    option("ema_decay", "EMA decay of the sampling weights", type=float)
    option("twin_batches", "keep mirror twins (world --mix world-model) in one batch with the "
           "same timestep and noise, so the loss difference falls on the direction words",
           action="store_true", shown=False)  # fmt: skip
    option("probe_every", "steps between text-sensitivity probes (loss gap per caption "
           "attribute, logged to metrics.jsonl and drawn beside the loss; 0: none)", type=_count)  # fmt: skip
    option("gradient_checkpointing", "recompute each block in backward: less activation "
           "memory, about a third more time", action="store_true", shown=False)  # fmt: skip
    parser.set_defaults(run=_train)


def _add_train_captioner(sub) -> None:
    parser = sub.add_parser(
        "train-captioner",
        help="train the video captioner on world clips and their ground-truth captions",
        description="Train a video-to-text model over the VAE's latents (or the frames, --pixels) on a "
        "manifest's "
        "captions (the long ones by default), then caption the held-out clips, parse the "
        "captions back and report the accuracy of every attribute. Writes config.json, "
        "checkpoint/ (the captioner in checkpoint/model, what caption --model RUN reads), "
        "metrics.jsonl, loss.png and report.json to --out.",
        formatter_class=_DefaultsHelp,
    )
    parser.add_argument("--data", required=True, help="manifest.jsonl of world clips")
    parser.add_argument(
        "--vae", help="VAE folder or train-vae run (default: the bundled world VAE)"
    )
    parser.add_argument("--cache", help="latent cache folder to share (e.g. a DiT run's)")
    _common_train_options(parser, CAPTIONER_CONFIG)
    option = functools.partial(_config_option, parser, CAPTIONER_CONFIG)
    option("batch", "clips per step (over all ranks)", type=_positive_int)
    option("level", "caption level to learn")
    option("width", "model width", type=_positive_int)
    option("layers", "layers each side", type=_positive_int)
    option("encoder_layers", "encoder layers, where not --layers (0: as --layers); above an "
           "--init's own, layers are added that start as the identity", type=_count)  # fmt: skip
    option("object_loss", "weight of heads that name each object's attributes at the encoder "
           "token where it starts (world clips' truth files; 0: none), as caption words",
           type=float)  # fmt: skip
    option("track_loss", "weight of a head that tracks each object over its next 16 frames "
           "from the token where it starts (with --object-loss; 0: none), as caption words",
           type=float)  # fmt: skip
    option("patch", "spatial patch side in latent pixels (1: 8-px tokens), or in pixels with "
           "--pixels", type=_positive_int)  # fmt: skip
    option("pixels", "read RGB frames resized to this shorter side (e.g. 64, with --patch 8 "
           "and --max-frames 17) instead of the VAE's latents; 0: latents", type=_count)  # fmt: skip
    option("stem", "with --pixels: channels of a convolutional stem over each frame (e.g. 32; "
           "0: none)", type=_count)  # fmt: skip
    option("holdout", "clips at the manifest's end held out for the report", type=_count)
    option("pass_tokens", "padded encoder tokens a pass: a step's clips run sorted by length "
           "in passes of about this many, their gradients added", type=_positive_int,
           shown=False)  # fmt: skip
    option("max_frames", "frames of each clip to encode (1 + 4k): 49 shares a world-model DiT "
           "run's latent cache; the captioner reads the first 17, so 17 encodes only those",
           type=_positive_int)  # fmt: skip
    option("init", "captioner (model or run folder) whose weights and vocabulary start the "
           "run (fine-tune it; new optimizer; --width, --layers and --patch are its own; a "
           "captioner of latents starts one of --pixels with a new patch embedding)",
           shown=False)  # fmt: skip
    parser.set_defaults(run=_train_captioner)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (also used to test that each one has --help)."""
    parser = argparse.ArgumentParser(
        prog="kinetoscope",
        description="Text-to-video generation with a causal video VAE and a packed diffusion "
        "transformer, from data to model to video.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    world = sub.add_parser(
        "world",
        help="render a synthetic world dataset of captioned clips with exact ground truth",
        description="Render clips of a deterministic 2D physics world (moving shapes with exact "
        "captions) as lossless videos, with a manifest.jsonl and per-clip ground truth. "
        "The same seed gives the same bytes.",
        formatter_class=_DefaultsHelp,
    )
    world.add_argument("--out", required=True, help="output folder")
    world.add_argument("--clips", type=int, default=100, help="number of clips")
    world.add_argument("--seed", type=int, default=0, help="random seed of the whole dataset")
    world.add_argument(
        "--mix",
        default="default",
        help="named mix of canvases, durations and scenes: 'default' (every size up to 256 px "
        "and 65 frames) or 'world-model' (what the bundled world model trains on: up to 128 px, "
        "mostly 5-33 frames, no early bounces, every clip followed by its left-right mirror); "
        "the options below override it",
    )
    mix = "(default: the mix's)"
    world.add_argument("--min-side", type=int, help=f"smallest width or height (px) {mix}")
    world.add_argument("--max-side", type=int, help=f"largest width or height (px) {mix}")
    world.add_argument(
        "--aspect-ratios", help=f"comma-separated aspect ratios (width:height) to draw from {mix}"
    )
    world.add_argument("--min-frames", type=int, help=f"fewest frames (1 + 4k) {mix}")
    world.add_argument("--max-frames", type=int, help=f"most frames (1 + 4k) {mix}")
    world.add_argument("--fps", type=int, help=f"frames per second {mix}")
    world.add_argument("--min-objects", type=int, help=f"fewest objects per clip {mix}")
    world.add_argument("--max-objects", type=int, help=f"most objects per clip {mix}")
    world.add_argument(
        "--exclude",
        help="(color, shape, motion) combinations never generated: 'default' (the held-out "
        "list of the world benchmark), 'none', or a list like red:circle:fall,blue:square:left "
        f"{mix}",
    )
    world.add_argument(
        "--start-room",
        type=float,
        help="share of the room behind a moving object it may start in, in (0, 1] (default: "
        "the mix's, 0.6; less ties where objects start to their direction)",
    )
    world.add_argument("--workers", type=_count, default=0, help="processes (0: one per core)")
    world.set_defaults(run=_world)

    index = sub.add_parser(
        "index",
        help="build a manifest for a folder of your own videos and images",
        description="Probe every video and image under FOLDER (recursively) and write a "
        "manifest.jsonl. Captions come from a sidecar .txt beside each file or from a CSV/JSONL "
        "of path,caption. Files that cannot be read go to an error report with the reason.",
        formatter_class=_DefaultsHelp,
    )
    index.add_argument("folder", help="folder of videos and images")
    index.add_argument("--out", required=True, help="manifest to write (.jsonl)")
    index.add_argument("--captions", help="CSV or JSONL of path,caption (paths relative to FOLDER)")
    index.add_argument(
        "--errors", help="error report to write (default: beside the manifest, .errors.jsonl)"
    )
    index.add_argument(
        "--workers", type=_count, default=0, help="probing threads (0: one per core)"
    )
    index.set_defaults(run=_index)
    _add_train_vae(sub)
    _add_train(sub)

    add_generate_command(sub)

    _add_train_captioner(sub)

    caption = sub.add_parser(
        "caption", help="print a caption for each video (the trained world captioner, or a "
        "vision model of an OpenAI-compatible endpoint for real footage)",
        formatter_class=_DefaultsHelp,
    )  # fmt: skip
    caption.add_argument("videos", nargs="+", help="video or image files")
    _captioner_options(caption)
    caption.set_defaults(run=_caption)

    recaption = sub.add_parser(
        "recaption",
        help="write a new manifest whose clips also carry the captioner's caption",
        description="Caption every clip of MANIFEST and write --out: each record keeps its "
        "captions and gains a 'generated' one. The input is never touched; a killed job "
        "continues where it stopped when run again with the same --out.",
        formatter_class=_DefaultsHelp,
    )
    recaption.add_argument("manifest", help="manifest.jsonl to caption")
    recaption.add_argument("--out", required=True, help="the new manifest")
    _captioner_options(recaption)
    recaption.set_defaults(run=_recaption)

    expander = sub.add_parser(
        "train-expander",
        help="fit the offline prompt expander on a manifest's captions",
        description="Count how often each size (per shape), motion and background appears in "
        "the captions of a manifest: the expander fills what a user's prompt leaves out by "
        "sampling these frequencies (`generate --expand`). Seconds.",
        formatter_class=_DefaultsHelp,
    )
    expander.add_argument("--data", required=True, help="manifest.jsonl of captioned clips")
    expander.add_argument("--out", required=True, help="folder for the expander")
    expander.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    expander.set_defaults(run=_train_expander)

    demo = sub.add_parser(
        "demo",
        help="a web app (Gradio) for every generation mode, in your browser",
        description="Serve a web page for text to video, animating an image, extending, "
        "connecting and editing videos, loops, long videos and storyboards, with the bundled "
        "world model or --model. It binds to this machine only unless --host says otherwise, "
        "runs one job at a time (--concurrency), refuses requests beyond the limits, and stops "
        "on Ctrl-C. Needs the 'demo' extra: pip install -e '.[demo]'.",
        formatter_class=_DefaultsHelp,
    )
    demo.add_argument("--model", help="model or run folder (default: the bundled world model)")
    demo.add_argument(
        "--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)"
    )
    demo.add_argument("--port", type=int, default=7860, help="port to serve on")
    demo.add_argument("--concurrency", type=int, default=1, help="jobs run at the same time")
    demo.add_argument("--max-side", type=int, default=256, help="largest width or height (px)")
    demo.add_argument("--max-frames", type=int, default=257, help="most frames of a result")
    demo.add_argument("--max-steps", type=int, default=100, help="most sampler steps")
    demo.add_argument("--out", help="folder for the results (default: a new temporary one)")
    demo.add_argument("--device", help="cpu, cuda or cuda:N (default: the GPU if any)")
    demo.add_argument("--threads", type=_positive_int, help="torch CPU threads")
    demo.set_defaults(run=_demo)

    eval_sub = add_eval_command(sub)

    debug = "show the full traceback of any failure (for reporting a bug)"
    parser.add_argument("--debug", action="store_true", help=debug)
    for command in [*sub.choices.values(), *eval_sub.choices.values()]:
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug)
    return parser


def _expected(error: BaseException) -> tuple[str, int] | None:
    """(one-line message, exit code) of an expected failure; None for a bug."""
    from safetensors import SafetensorError

    from kinetoscope.io import VideoReadError
    from kinetoscope.train.run import TrainingStopped

    if isinstance(error, TrainingStopped):
        return str(error), error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", 130
    text = str(error)
    if isinstance(error, MemoryError) or any(
        words in text.lower() for words in ("out of memory", "not enough memory", "can't allocate")
    ):
        tried = re.search(r"tried to allocate ([\d.]+ ?\w+)", text)
        return (
            "out of memory"
            + (f" (it tried to allocate {tried.group(1)})" if tried else "")
            + "; ask for less (a smaller size, fewer frames, a smaller batch or token budget) "
            "or use a device with more memory",
            1,
        )
    if isinstance(error, FloatingPointError):  # a model whose outputs are not finite
        return str(error), 1
    if isinstance(error, ValueError | VideoReadError):
        return str(error), 2 if isinstance(error, ValueError) else 1
    if isinstance(error, OSError):
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror or error}", 1
    if isinstance(error, SafetensorError):
        return f"a weights or cache file is not valid safetensors ({error})", 1
    try:
        import av

        if isinstance(error, av.error.FFmpegError):
            return f"video coding failed: {error}", 1
    except ImportError:
        pass
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    name = f"kinetoscope {args.command}" + (f" {args.what}" if args.command == "eval" else "")
    with warnings.catch_warnings():
        if not args.debug:  # a warning is one line, not the source line that raised it
            warnings.showwarning = lambda message, *_, **__: print(
                f"{name}: warning: {message}", file=sys.stderr
            )
        try:
            return args.run(args)
        except (Exception, KeyboardInterrupt) as error:
            if args.debug:
                raise
            expected = _expected(error)
            if expected is None:  # a bug: the traceback is what a report needs
                traceback.print_exc()
                print(
                    f"{name}: internal error (a bug in kinetoscope): {type(error).__name__}: "
                    f"{error}",
                    file=sys.stderr,
                )
                return 70
            message, code = expected
            message = "; ".join(line.strip() for line in message.splitlines() if line.strip())
            print(f"{name}: error: {message}", file=sys.stderr)
            return code


if __name__ == "__main__":
    raise SystemExit(main())
