"""The `kinetoscope` command: thin front ends that parse, call and print.

Each subcommand imports its implementation lazily so that `kinetoscope --help` stays instant.
Every output path is checked before any work. An expected failure (a user error, a file that
cannot be read or written, a corrupt weights file, running out of memory, an interrupted or
diverged run) ends with one line on stderr and a non-zero exit; a traceback is shown only
under `--debug` or for a bug.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import traceback
import warnings
from pathlib import Path


def _positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _count(text: str) -> int:
    """argparse type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


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


def _train_vae(args: argparse.Namespace) -> int:
    from kinetoscope.train.vae import train_vae
    from kinetoscope.vae.losses import VAELossConfig

    summary = train_vae(
        args.data,
        args.out,
        overwrite=args.overwrite,
        preset=args.preset,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        precision=args.precision,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        holdout=args.holdout,
        resume=args.resume,
        seed=args.seed,
        max_area=args.max_area,
        max_frames=args.max_frames,
        crop=args.crop,
        images=args.images,
        image_steps=args.image_steps,
        init=args.init,
        loss_config=VAELossConfig(l1_weight=args.l1_weight, mse_weight=args.mse_weight),
        threads=args.threads,
    )
    psnr = summary.get("heldout_psnr")
    print(
        f"trained {summary['steps']} steps: final loss {summary['final_loss']:.5f}"
        + (f", held-out PSNR {psnr:.2f} dB" if psnr is not None else "")
        + f", {summary['frames_per_second']:.1f} frames/s, {summary['skipped']} clips skipped"
    )
    print(f"weights: {args.out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from kinetoscope.train.dit import train_dit

    overrides = {"preset": args.preset, "steps": args.steps, "lr": args.lr,
                 "precision": args.precision, "seed": args.seed, "threads": args.threads,
                 "checkpoint_every": args.checkpoint_every, "preview_every": args.preview_every,
                 "max_frames": args.max_frames, "text_encoder": args.text_encoder,
                 "token_budget": args.token_budget, "warmup": args.warmup,
                 "sequences_per_batch": args.sequences, "max_area": args.max_area,
                 "init": args.init, "timestep_mean": args.timestep_mean,
                 "probe_every": args.probe_every, "caption_dropout": args.caption_dropout,
                 "given_prob": args.given_prob,
                 "ema_decay": args.ema_decay, "device": args.device,
                 "twin_batches": args.twin_batches or None}  # fmt: skip
    summary = train_dit(
        args.data,
        args.out,
        vae=args.vae,
        cache=args.cache,
        resume=args.resume,
        overwrite=args.overwrite,
        **{key: value for key, value in overrides.items() if value is not None},
    )
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


def _write_output(path: Path, video, fps: float) -> Path:
    """Write `T H W 3` frames by extension; a video asked as an image becomes numbered PNGs."""
    from kinetoscope.io import IMAGE_EXTENSIONS, write_frames, write_video

    if path.suffix.lower() in IMAGE_EXTENSIONS and len(video) > 1:
        folder = path.with_suffix("")
        write_frames(folder, video)
        return folder
    return write_video(path, video, fps)


def _generate(args: argparse.Namespace) -> int:
    import torch

    from kinetoscope.conditioning import SINGLE_PASS_FRAMES
    from kinetoscope.pipeline import DEFAULT_SIZE, Pipeline, resolve_device

    mode, inputs = _generation_mode(args)  # every option checked, every input read, first
    out = _generation_output(args, single_image=mode == "text" and args.frames == 1)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    # Refuse sizes off the grid before loading the model (an input's own size always fits).
    single = mode == "text" and not args.loop and args.frames <= SINGLE_PASS_FRAMES
    width, height, _ = DEFAULT_SIZE
    sizes = [(args.width or width, args.height or height, args.frames if single else 1)]
    pipe = Pipeline.load(args.model, device=device, sizes=sizes)  # sizes checked first
    loading = time.perf_counter() - start
    _expand_prompts(args, mode, inputs)
    result = _run_mode(pipe, mode, inputs, args)
    start = time.perf_counter()
    path = _write_output(out, result.video, args.fps)
    writing = time.perf_counter() - start
    video = result.video
    height, width = video.shape[1:3]
    what = "image" if len(video) == 1 else f"{len(video)} frames at {args.fps:g} fps"
    print(f"wrote {path} ({width}x{height}, {what}, seed {args.seed})")
    if mode != "text":
        print(f"{result.mode}: {result.given} frames given, {result.generated} generated")
    for note in result.notes:
        print(f"  {note}")
    t = result.timings
    total = loading + sum(t.values()) + writing
    print(
        f"took {total:.1f} s: loading {loading:.1f} s, text {t.get('text', 0):.2f} s, sampling "
        f"{t.get('sampling', 0):.1f} s ({args.steps} {args.sampler} steps a window), decoding "
        f"{t.get('decoding', 0):.1f} s, writing {writing:.2f} s"
    )
    return 0


_MODE_OPTIONS = ("image", "video", "connect", "edit", "storyboard")


def _generation_mode(args: argparse.Namespace) -> tuple[str, dict]:
    """The mode asked ("text", "image", "video", "connect", "edit" or "storyboard") and its
    inputs, read now; ValueError for options that conflict or inputs that cannot be read."""
    from kinetoscope.conditioning import load_frames, read_storyboard

    asked = [name for name in _MODE_OPTIONS if getattr(args, name) is not None]
    if len(asked) > 1:
        raise ValueError(f"choose one of --{' or --'.join(asked)}: they are separate modes")
    mode = asked[0] if asked else "text"
    if (mode == "storyboard") == (args.prompt is not None):
        raise ValueError(
            "a storyboard gives each segment's prompt; drop PROMPT"
            if mode == "storyboard"
            else "give a PROMPT: what the video shows, e.g. 'a red circle moving right'"
        )
    if args.loop and mode not in ("text", "image"):
        raise ValueError(f"--loop makes a looping video from text or --image, not --{mode}")
    if args.extend is not None and mode != "video":
        raise ValueError("--extend needs --video PATH, the video to extend")
    if args.strength is not None and mode != "edit":
        raise ValueError("--strength needs --edit PATH, the video to edit")
    if mode == "storyboard" and args.frames is not None:
        raise ValueError("a storyboard gives each segment's frames; drop --frames")
    if args.frames is None:
        args.frames = 16 if mode in ("video", "connect") else 17
    if mode == "storyboard":
        return mode, {"segments": read_storyboard(args.storyboard)}
    if mode == "text":
        return mode, {}
    if mode == "connect":
        first, second = (load_frames(path) for path in args.connect)
        return mode, {"first": first, "second": second}
    return mode, {"frames": load_frames(getattr(args, mode))}


def _expand_prompts(args: argparse.Namespace, mode: str, inputs: dict) -> None:
    """With --expand (or --expand-endpoint), rewrite the prompt(s) once, before any window,
    into the training captions' style, and print them."""
    if not (args.expand or args.expand_endpoint):
        return
    from kinetoscope.text.expand import ChatExpander, PromptExpander

    if args.expand_endpoint:
        if not args.expand_model:
            raise ValueError("--expand-endpoint needs --expand-model NAME (the served model)")
        expander = ChatExpander(args.expand_endpoint, args.expand_model)
    else:
        expander = PromptExpander.load()
    video = mode != "text" or args.frames > 1
    if mode == "storyboard":
        inputs["segments"] = [(expander.expand(prompt, seed=args.seed + i, video=video), count)
                              for i, (prompt, count) in enumerate(inputs["segments"])]  # fmt: skip
        for prompt, _ in inputs["segments"]:
            print(f"expanded prompt: {prompt}")
        return
    args.prompt = expander.expand(args.prompt, seed=args.seed, video=video)
    print(f"expanded prompt: {args.prompt}")


def _run_mode(pipe, mode: str, inputs: dict, args: argparse.Namespace):
    """Generate in `mode` with the inputs `_generation_mode` read (a `Prompted`)."""
    from kinetoscope import conditioning

    options = {"steps": args.steps, "guidance": args.guidance, "seed": args.seed,
               "sampler": args.sampler, "negative": args.negative, "width": args.width,
               "height": args.height}  # fmt: skip
    prompt, frames = args.prompt, args.frames
    if mode == "storyboard":
        return conditioning.long_video(pipe, inputs["segments"], **options)
    if mode == "text" and args.loop:
        return conditioning.loop(pipe, prompt, frames=frames, **options)
    if mode == "text":
        return conditioning.text_to_video(pipe, prompt, frames=frames, **options)
    if mode == "image":
        return conditioning.animate(
            pipe, prompt, inputs["frames"], frames=frames, loop=args.loop, **options
        )
    if mode == "video":
        return conditioning.extend(
            pipe, prompt, inputs["frames"], frames=frames, direction=args.extend or "forward",
            **options,
        )  # fmt: skip
    if mode == "connect":
        return conditioning.connect(pipe, prompt, inputs["first"], inputs["second"],
                                    frames=frames, **options)  # fmt: skip
    strength = conditioning.DEFAULT_STRENGTH if args.strength is None else args.strength
    return conditioning.edit(pipe, prompt, inputs["frames"], strength=strength, **options)


def _generation_output(args: argparse.Namespace, single_image: bool) -> Path:
    """--out, checked: a known extension, a writable place, not replacing a file unasked."""
    from kinetoscope.io import IMAGE_EXTENSIONS, check_output_file, check_output_folder

    out = Path(args.out or ("image.png" if single_image else "video.mp4"))
    kinds = {".mp4", ".gif", ".mkv", *IMAGE_EXTENSIONS}
    if out.suffix.lower() not in kinds:
        raise ValueError(f"--out {out}: use one of {', '.join(sorted(kinds))}")
    frames_folder = out.suffix.lower() in IMAGE_EXTENSIONS and not single_image
    target = out.with_suffix("") if frames_folder else out
    if frames_folder:
        check_output_folder(target, "--out (a folder of frames for more than one frame)")
    else:
        check_output_file(out, "--out")
    if not args.overwrite and (target.is_file() or (target.is_dir() and any(target.iterdir()))):
        raise ValueError(f"--out {target} already exists; pass --overwrite to replace it")
    return out


def _eval_vae(args: argparse.Namespace) -> int:
    from kinetoscope.evaluate.vae import evaluate_vae
    from kinetoscope.io import check_output_folder
    from kinetoscope.vae import load_vae

    if args.out:
        check_output_folder(args.out, "--out")
    report = evaluate_vae(
        load_vae(args.vae),
        args.data,
        limit=args.limit,
        out=args.out,
        max_area=args.max_area,
        max_frames=args.max_frames,
        progress=True,
    )
    print(
        f"{report['clips']} clips: PSNR {report['psnr']:.2f} dB, SSIM {report['ssim']:.4f}, "
        f"{report['latent_bits_per_pixel']:.3f} latent bits/pixel, "
        f"{report['frames_per_second']:.1f} frames/s, {report['skipped']} skipped"
    )
    for clip in sorted(report["per_clip"], key=lambda clip: clip["psnr"])[:3]:
        print(
            f"  worst: {clip['path']} ({clip['width']}x{clip['height']}x{clip['frames']}): "
            f"PSNR {clip['psnr']:.2f} dB, SSIM {clip['ssim']:.4f}"
        )
    if args.out:
        print(f"report (every clip's scores) and examples: {args.out}")
    return 0


def _train_captioner(args: argparse.Namespace) -> int:
    from kinetoscope.train.captioner import train_captioner

    overrides = {"steps": args.steps, "batch": args.batch, "lr": args.lr, "level": args.level,
                 "holdout": args.holdout, "seed": args.seed, "threads": args.threads,
                 "checkpoint_every": args.checkpoint_every, "width": args.width,
                 "layers": args.layers}  # fmt: skip
    report = train_captioner(args.data, args.out, vae=args.vae, cache=args.cache,
                             resume=args.resume, overwrite=args.overwrite,
                             **{k: v for k, v in overrides.items() if v is not None})  # fmt: skip
    if "accuracy" not in report:
        print(f"stopped at step {report['step']}; continue with --resume")
        return 0
    accuracy = ", ".join(f"{k} {v:.1%}" for k, v in report["accuracy"].items())
    print(f"{report['heldout']} held-out clips: {accuracy}; "
          f"{report['clips_per_second']:.1f} clips/s")  # fmt: skip
    print(f"captioner: {Path(args.out) / 'captioner'}")
    return 0


def _caption(args: argparse.Namespace) -> int:
    import torch

    from kinetoscope.captioner import Captioner
    from kinetoscope.captioner.run import caption_files

    if args.threads:
        torch.set_num_threads(args.threads)
    captioner = Captioner.load(args.model) if args.model else Captioner.load_bundled()
    for path, text in caption_files(captioner, args.videos):
        print(f"{path}: {text}")
    return 0


def _recaption(args: argparse.Namespace) -> int:
    import torch

    from kinetoscope.captioner import Captioner
    from kinetoscope.captioner.run import recaption

    if args.threads:
        torch.set_num_threads(args.threads)
    captioner = Captioner.load(args.model) if args.model else Captioner.load_bundled()
    done = recaption(captioner, args.manifest, args.out, progress=True)
    print(f"wrote {args.out}: {done['captioned']} clips captioned now, {done['kept']} kept "
          f"from before, {done['skipped']} unreadable")  # fmt: skip
    return 0


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


def _eval_sensitivity(args: argparse.Namespace) -> int:
    import json

    from kinetoscope.evaluate.sensitivity import ATTRIBUTES, build_probe, text_sensitivity
    from kinetoscope.io import check_output_file
    from kinetoscope.pipeline import Pipeline

    if args.clips < 1:
        raise ValueError(f"--clips must be at least 1, got {args.clips}")
    if args.out:
        check_output_file(args.out, "--out")
    pipe = Pipeline.load(args.model, device=args.device, precision=args.precision)
    probe = build_probe(pipe.vae, args.clips, device=pipe.device)
    result = text_sensitivity(pipe.dit, pipe.text, probe, pipe.device, pipe.precision)
    times = "  ".join(f"t={t:<5g}" for t in probe.timesteps)
    print(f"flow loss with the true caption: {result['loss']:.4f} ({args.clips} clips)")
    print(f"{'attribute':<11} {'gap':>8} {'true wins':>9}   gap at {times}")
    for name in ATTRIBUTES:
        per_t = "  ".join(f"{result[f'gap_{name}_t{t:g}']:+7.2%}" for t in probe.timesteps)
        gap, win = result[f"gap_{name}"], result[f"win_{name}"]
        print(f"{name:<11} {gap:>+8.2%} {win:>9.0%}   {per_t}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"report: {args.out}")
    return 0


def _eval_world(args: argparse.Namespace) -> int:
    from kinetoscope.evaluate.world import (
        evaluate_folder,
        read_suite,
        render_suite,
        suite,
        write_suite,
    )
    from kinetoscope.io import check_output_file, check_output_folder

    for option, path in (("--out", args.out), ("--render-reference", args.render_reference)):
        if path:
            check_output_folder(path, option)
    if args.export_suite:
        check_output_file(args.export_suite, "--export-suite")
    if args.model:
        check_output_folder(args.videos or Path(args.out or "world-eval") / "videos", "--videos")
    if args.specs:
        suites = {Path(args.specs).stem: read_suite(args.specs)}
    else:
        suites = {name: suite(name) for name in args.suite.split(",")}
    if args.export_suite:
        path = write_suite(args.export_suite, [e for entries in suites.values() for e in entries])
        print(f"wrote {sum(map(len, suites.values()))} prompts and scene specs to {path}")
        return 0
    if args.render_reference:
        for entries in suites.values():
            render_suite(entries, args.render_reference)
        print(f"rendered the ground-truth videos of {', '.join(suites)} to {args.render_reference}")
        return 0
    if args.model:
        from kinetoscope.evaluate.world import generate_suite
        from kinetoscope.pipeline import Pipeline

        args.videos = args.videos or str(Path(args.out or "world-eval") / "videos")
        sizes = [(e.spec.width, e.spec.height, e.spec.frames) for s in suites.values() for e in s]
        pipe = Pipeline.load(args.model, sizes=sizes)
        for name, entries in suites.items():
            print(f"== generating suite {name} ({len(entries)} prompts) into {args.videos}")
            options = {"steps": args.steps, "guidance": args.guidance, "seed": args.seed}
            generate_suite(pipe, entries, args.videos, **options)
    if not args.videos:
        raise ValueError(
            "give --videos DIR or --model DIR (or --export-suite FILE / --render-reference DIR)"
        )
    out = Path(args.out) if args.out else Path(args.videos)
    means = {}
    for name, entries in suites.items():
        print(f"== suite {name} ({len(entries)} prompts)")
        report = evaluate_folder(
            args.videos, entries, out=out / f"world_{name}.json", worst=args.worst
        )
        means[name] = report["mean"]
    if len(means) > 1:  # the suites side by side: seen combinations against held-out ones
        names = list(means)
        print("\n| score | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
        for key in next(iter(means.values())):
            cells = ["-" if m[key] is None else f"{m[key]:.3f}" for m in means.values()]
            print(f"| {key} | " + " | ".join(cells) + " |")
    return 0


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None, "" and False (their help says what happens without the option)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default == "" or action.default is False:
            return action.help
        return super()._get_help_string(action)


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
    train_vae = sub.add_parser(
        "train-vae",
        help="train the causal video VAE on a manifest of clips",
        description="Train the causal video VAE on the clips of a manifest (random crops of "
        "native-size clips). Checkpoints (safetensors + config.json, and the training state) "
        "go to --out; --resume continues from them exactly.",
        formatter_class=_DefaultsHelp,
    )
    train_vae.add_argument("--data", required=True, help="manifest.jsonl of training clips")
    train_vae.add_argument("--preset", default="world", help="VAE preset: tiny, world or base")
    train_vae.add_argument("--out", required=True, help="checkpoint folder")
    train_vae.add_argument("--steps", type=int, required=True, help="optimizer steps in all")
    train_vae.add_argument("--batch", type=int, default=4, help="clips per step")
    train_vae.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW)")
    train_vae.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="auto: bf16 autocast where it is fast (GPUs, CPUs with AVX512-BF16 or AMX)",
    )
    train_vae.add_argument("--eval-every", type=int, default=250, help="steps between evals")
    train_vae.add_argument(
        "--checkpoint-every", type=int, help="steps between checkpoints (default: --eval-every)"
    )
    train_vae.add_argument(
        "--holdout", type=int, default=8, help="clips at the manifest's end kept for PSNR"
    )
    train_vae.add_argument("--resume", action="store_true", help="continue from --out")
    train_vae.add_argument(
        "--overwrite", action="store_true", help="replace the run in --out (else it is refused)"
    )
    train_vae.add_argument(
        "--init",
        metavar="VAE",
        help="start from this VAE's weights (a folder or 'world'; fine-tuning: new optimizer "
        "and schedule; --preset is then ignored)",
    )
    train_vae.add_argument("--seed", type=int, default=0, help="seed of init, order and crops")
    train_vae.add_argument("--max-area", type=int, default=256 * 256, help="clip area cap (px)")
    train_vae.add_argument(
        "--max-frames",
        type=int,
        default=17,
        help="frames per clip (1 + 4k); at least the length you will code: a decoded frame "
        "depends on the last 10 latent frames, and frames past the trained length come out badly",
    )
    train_vae.add_argument("--crop", type=int, default=32, help="random crop side (px)")
    train_vae.add_argument(
        "--l1-weight", type=float, default=1.0, help="weight of the L1 pixel loss (sharp edges)"
    )
    train_vae.add_argument(
        "--mse-weight",
        type=float,
        default=1.0,
        help="weight of the MSE pixel loss (what PSNR measures)",
    )
    train_vae.add_argument(
        "--images",
        type=int,
        default=0,
        help="single frames (cut from other clips) per step, on top of --batch videos",
    )
    train_vae.add_argument(
        "--image-steps",
        type=int,
        default=0,
        help="first steps that train on single frames only (every clip gives one frame)",
    )
    train_vae.add_argument(
        "--threads",
        type=_positive_int,
        help="torch CPU threads (default: torch's choice; use 1 on a machine busy with other "
        "jobs, where waiting threads slow every small op down)",
    )
    train_vae.set_defaults(run=_train_vae)

    train = sub.add_parser(
        "train",
        help="train the text-conditioned diffusion transformer on a manifest",
        description="Encode clips with a VAE (cached on disk), pack them at native size and "
        "train a DiT with rectified flow. Works unchanged under torchrun (DDP). Writes "
        "checkpoints (safetensors + config.json), metrics.jsonl, loss.png and previews to --out.",
        formatter_class=_DefaultsHelp,
    )
    train.add_argument("--data", required=True, help="manifest.jsonl of captioned clips")
    train.add_argument("--preset", default="tiny", help="DiT preset: tiny, mini, small, base, ...")
    train.add_argument("--out", required=True, help="run folder")
    train.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    train.add_argument("--vae", help="VAE folder (default: the bundled world VAE)")
    train.add_argument(
        "--cache",
        help="latent and text-embedding cache folder (default: RUN/cache); share it between "
        "runs of the same data and VAE so clips are encoded once",
    )
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out (else an existing run is refused; its cache/ is kept)",
    )
    train.add_argument(
        "--init",
        help="model or run folder whose weights start the run (fine-tune it; new optimizer)",
    )
    train.add_argument("--lr", type=float, help="peak learning rate (default: the config's)")
    train.add_argument(
        "--precision", choices=("auto", "bf16", "fp32"), help="default auto: bf16 where fast"
    )
    train.add_argument("--seed", type=int, help="seed of init, data order and draws")
    train.add_argument("--max-frames", type=int, help="frames per clip (1 + 4k)")
    train.add_argument("--max-area", type=int, help="pixel area cap of a clip")
    train.add_argument(
        "--token-budget", type=int, help="tokens per packed sequence (default: longest clip)"
    )
    train.add_argument("--sequences", type=int, help="packed sequences per batch")
    train.add_argument("--warmup", type=int, help="linear warm-up steps")
    train.add_argument("--text-encoder", help="tiny, minilm or a local Hugging Face folder")
    train.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    train.add_argument("--preview-every", type=int, help="steps between previews (0: none)")
    train.add_argument(
        "--timestep-mean",
        type=float,
        help="location of the logit-normal timestep density (above 0: more training at high "
        "noise, where layout and motion are decided)",
    )
    train.add_argument(
        "--caption-dropout", type=float, help="empty-prompt rate (for classifier-free guidance)"
    )
    train.add_argument(
        "--given-prob",
        type=float,
        help="rate of videos trained with clean given frames, a prefix or a suffix (what "
        "image-to-video and extension sample with)",
    )
    train.add_argument("--ema-decay", type=float, help="EMA decay of the sampling weights")
    train.add_argument(
        "--twin-batches",
        action="store_true",
        help="keep mirror twins (world --mix world-model) in one batch with the same timestep "
        "and noise, so the loss difference falls on the direction words",
    )
    train.add_argument(
        "--probe-every",
        type=int,
        help="steps between text-sensitivity probes (loss gap per caption attribute, logged to "
        "metrics.jsonl and drawn beside the loss; 0: none)",
    )
    train.add_argument("--threads", type=_positive_int, help="torch CPU threads")
    train.add_argument(
        "--device", help="cpu, cuda or cuda:N (default: the GPU if any; under torchrun each rank's)"
    )
    train.set_defaults(run=_train)

    generate = sub.add_parser(
        "generate",
        help="generate a video (or an image) from a text prompt",
        description="Generate a video from a text prompt with a trained model: a grid of noise "
        "of the asked size, denoised by the diffusion transformer under classifier-free "
        "guidance, decoded by the VAE. The output format follows --out's extension: .mp4 "
        "(H.264, plays in browsers), .gif, .mkv (lossless), or .png/.jpg/.webp: an image for "
        "--frames 1, else a folder of numbered PNGs named after --out. The same prompt, seed "
        "and settings give the same video. Images and videos can prompt it too, one mode at a "
        "time: --image (animate it; with --loop, a loop), --video with --extend, --connect, "
        "--edit, --storyboard. Inputs of any size are fitted to the output size (resized to "
        "cover, centre-cropped); without --width/--height the output takes the input's own "
        "size, rounded to a multiple of 16. Your input frames come back unchanged in the "
        "output. Past 65 frames a video is made window by window, in constant memory.",
        formatter_class=_DefaultsHelp,
    )
    generate.add_argument(
        "prompt",
        nargs="?",
        help="what the video shows, e.g. 'a red circle moving right' (none with --storyboard)",
    )
    generate.add_argument(
        "--model",
        help="model folder: a run folder written by `kinetoscope train` (its EMA weights, VAE and "
        "text encoder), or its checkpoint/ema folder (default: the bundled world model)",
    )
    generate.add_argument(
        "--width", type=int, help="width in pixels, a multiple of 16 (default: 96, or the input's)"
    )
    generate.add_argument(
        "--height",
        type=int,
        help="height in pixels, a multiple of 16 (default: 64, or the input's)",
    )
    generate.add_argument(
        "--frames",
        type=int,
        help="frames: of the video, 1 + 4k up to 65 and any count beyond (1 is an image); with "
        "--video, the frames to add; with --connect, the transition's, a multiple of 4 "
        "(default: 17; 16 to add or connect)",
    )
    generate.add_argument("--steps", type=int, default=30, help="sampler steps")
    generate.add_argument(
        "--guidance",
        type=float,
        default=4.0,
        help="classifier-free guidance scale: higher follows the prompt more closely; 1 is off",
    )
    generate.add_argument("--seed", type=int, default=0, help="seed of the noise")
    generate.add_argument(
        "--sampler",
        choices=("euler", "heun"),
        default="euler",
        help="ODE solver: heun is second order and calls the model twice per step",
    )
    generate.add_argument(
        "--negative",
        default="",
        help="negative prompt: what to steer away from under guidance (default: the empty one)",
    )
    generate.add_argument(
        "--out", help="output file (default: video.mp4, or image.png for --frames 1)"
    )
    generate.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (else refused)"
    )
    generate.add_argument("--fps", type=float, default=8.0, help="frames per second of the file")
    generate.add_argument(
        "--expand",
        action="store_true",
        help="rewrite the prompt into the detailed caption style the model trained on, filling "
        "in what it leaves out (the bundled offline expander; prints the result)",
    )
    generate.add_argument(
        "--expand-endpoint",
        metavar="URL",
        help="expand with an OpenAI-compatible chat server instead, e.g. "
        "http://localhost:8000/v1 (with --expand-model)",
    )
    generate.add_argument("--expand-model", metavar="NAME", help="the model the server serves")
    prompting = generate.add_argument_group("image and video prompts (one mode at a time)")
    prompting.add_argument("--image", metavar="PATH", help="animate this image: it is frame 0")
    prompting.add_argument(
        "--loop", action="store_true", help="a seamless loop (from --image, or from the prompt)"
    )
    prompting.add_argument("--video", metavar="PATH", help="a video to extend (with --extend)")
    prompting.add_argument(
        "--extend",
        choices=("forward", "backward"),
        help="add --frames after the video's end (forward) or before its start (default: forward)",
    )
    prompting.add_argument(
        "--connect",
        nargs=2,
        metavar=("A", "B"),
        help="video A, then a generated transition of --frames, then video B",
    )
    prompting.add_argument(
        "--edit", metavar="PATH", help="re-generate this video under the prompt (SDEdit)"
    )
    prompting.add_argument(
        "--strength",
        type=float,
        help="how much of --edit to re-generate, in [0, 1]: 0 returns the input, 1 ignores it "
        "(default: 0.6)",
    )
    prompting.add_argument(
        "--storyboard",
        metavar="FILE",
        help="a text file of 'FRAMES PROMPT' lines: segments one after another, each continuing "
        "the last (give no PROMPT)",
    )
    generate.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the GPU if any)")
    generate.add_argument(
        "--threads", type=_positive_int, help="torch CPU threads (default: torch's)"
    )
    generate.set_defaults(run=_generate)

    captioner = sub.add_parser(
        "train-captioner",
        help="train the video captioner on world clips and their ground-truth captions",
        description="Train a video-to-text model over the VAE's latents on a manifest's "
        "captions (the long ones by default), then caption the held-out clips, parse the "
        "captions back and report the accuracy of every attribute.",
        formatter_class=_DefaultsHelp,
    )
    captioner.add_argument("--data", required=True, help="manifest.jsonl of world clips")
    captioner.add_argument("--out", required=True, help="run folder")
    captioner.add_argument("--vae", help="VAE folder (default: the bundled world VAE)")
    captioner.add_argument("--cache", help="latent cache folder to share (e.g. a DiT run's)")
    captioner.add_argument("--resume", action="store_true", help="continue the run in --out")
    captioner.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    captioner.add_argument("--steps", type=_positive_int, help="training steps (default: 3000)")
    captioner.add_argument("--batch", type=_positive_int, help="clips per step (default: 32)")
    captioner.add_argument("--lr", type=float, help="peak learning rate (default: 1e-3)")
    captioner.add_argument("--level", help="caption level to learn (default: long)")
    captioner.add_argument("--width", type=_positive_int, help="model width (default: 256)")
    captioner.add_argument("--layers", type=_positive_int, help="layers each side (default: 3)")
    captioner.add_argument("--holdout", type=int, help="clips held out (default: 200)")
    captioner.add_argument("--checkpoint-every", type=_positive_int, help="(default: 500)")
    captioner.add_argument("--seed", type=int, help="seed (default: 0)")
    captioner.add_argument("--threads", type=_positive_int, help="torch CPU threads")
    captioner.set_defaults(run=_train_captioner)

    caption = sub.add_parser(
        "caption", help="print a caption for each video (the trained world captioner)",
        formatter_class=_DefaultsHelp,
    )  # fmt: skip
    caption.add_argument("videos", nargs="+", help="video or image files")
    caption.add_argument("--model", help="captioner folder (default: the bundled one)")
    caption.add_argument("--threads", type=_positive_int, help="torch CPU threads")
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
    recaption.add_argument("--model", help="captioner folder (default: the bundled one)")
    recaption.add_argument("--threads", type=_positive_int, help="torch CPU threads")
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

    evaluate = sub.add_parser(
        "eval",
        help="measure a VAE (reconstruction) or videos against the world benchmark",
        description="Evaluate a trained model on a manifest of clips.",
    )
    eval_sub = evaluate.add_subparsers(dest="what", metavar="WHAT", required=True)
    eval_vae = eval_sub.add_parser(
        "vae",
        help="reconstruction PSNR, SSIM, latent bits per pixel and throughput of a VAE",
        description="Reconstruct clips through a trained VAE; print PSNR, SSIM, latent bits "
        "per pixel and throughput, and with --out write report.json and example GIF/PNGs.",
        formatter_class=_DefaultsHelp,
    )
    eval_vae.add_argument(
        "--vae", required=True, help="VAE folder (model.safetensors + config.json) or 'world'"
    )
    eval_vae.add_argument("--data", required=True, help="manifest.jsonl of evaluation clips")
    eval_vae.add_argument("--limit", type=int, help="evaluate only the first N clips")
    eval_vae.add_argument("--out", help="folder for report.json and examples")
    eval_vae.add_argument("--max-area", type=int, default=256 * 256, help="clip area cap (px)")
    eval_vae.add_argument("--max-frames", type=int, default=17, help="frames per clip (1 + 4k)")
    eval_vae.set_defaults(run=_eval_vae)

    eval_sensitivity = eval_sub.add_parser(
        "sensitivity",
        help="text-sensitivity probe: how much a model's loss rises when one caption attribute "
        "changes",
        description="For fixed rendered world clips at fixed timesteps and noise, measure the "
        "flow loss with the true caption and with it changed in one attribute (direction, "
        "color, shape, size, background, count). A positive gap means the model reads that "
        "attribute; a caption-blind model scores zero. Needs no sampling: seconds.",
        formatter_class=_DefaultsHelp,
    )
    eval_sensitivity.add_argument(
        "--model", help="model folder or run folder (default: the bundled world model)"
    )
    eval_sensitivity.add_argument("--clips", type=int, default=32, help="probe clips")
    eval_sensitivity.add_argument(
        "--precision", choices=("auto", "bf16", "fp32"), default="fp32", help="compute precision"
    )
    eval_sensitivity.add_argument("--device", help="cpu, cuda or cuda:N (default: the GPU if any)")
    eval_sensitivity.add_argument("--out", help="write the full result (JSON) here")
    eval_sensitivity.set_defaults(run=_eval_sensitivity)

    eval_world = eval_sub.add_parser(
        "world",
        help="score videos against the world benchmark's prompts from pixels alone",
        description="Score a folder of videos, one per benchmark prompt and named "
        "<entry name>.mp4 (or any video extension), against their scene specs: prompt "
        "adherence, world consistency (permanence, stability, physics) and frame quality. "
        "Writes a JSON report and a contact sheet of the worst cases per suite and prints the "
        "suites side by side. --export-suite writes the prompts and specs for generating the "
        "videos elsewhere; --render-reference renders the ground truth (it scores near 1).",
        formatter_class=_DefaultsHelp,
    )
    eval_world.add_argument(
        "--videos",
        help="folder of videos named after the suite entries (with --model: where the generated "
        "videos go; default <--out or world-eval>/videos)",
    )
    eval_world.add_argument(
        "--model",
        help="generate every suite prompt at its spec's size with this model (a run folder "
        "written by `kinetoscope train`) into --videos, then score them",
    )
    eval_world.add_argument("--steps", type=int, default=30, help="sampler steps (with --model)")
    eval_world.add_argument(
        "--guidance", type=float, default=4.0, help="guidance scale (with --model)"
    )
    eval_world.add_argument(
        "--seed", type=int, default=0, help="seed of suite entry i is seed + i (with --model)"
    )
    eval_world.add_argument(
        "--suite", default="standard,heldout", help="comma-separated suites: standard, heldout"
    )
    eval_world.add_argument("--specs", help="a suite file (JSON Lines) instead of --suite")
    eval_world.add_argument("--out", help="folder for the reports (default: --videos)")
    eval_world.add_argument("--worst", type=int, default=8, help="videos in each contact sheet")
    eval_world.add_argument("--export-suite", help="write the prompts and specs here and exit")
    eval_world.add_argument(
        "--render-reference", help="render the suites' ground-truth videos to this folder and exit"
    )
    eval_world.set_defaults(run=_eval_world)

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
