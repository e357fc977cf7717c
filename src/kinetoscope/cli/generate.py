"""`kinetoscope generate`: text to video, and every image and video prompting mode."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from kinetoscope.cli.options import _DefaultsHelp, _positive_int


def _write_output(path: Path, video, fps: float) -> Path:
    """Write `T H W 3` frames by extension; a video asked as an image becomes numbered PNGs."""
    from kinetoscope.io import IMAGE_EXTENSIONS, write_frames, write_video

    if path.suffix.lower() in IMAGE_EXTENSIONS and len(video) > 1:
        folder = path.with_suffix("")
        write_frames(folder, video)
        return folder
    return write_video(path, video, fps)


def run_generate(args: argparse.Namespace) -> int:
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


def add_generate_command(sub) -> None:
    """The `generate` subcommand's parser, added to the subparsers `sub`."""
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
    generate.set_defaults(run=run_generate)


__all__ = ["add_generate_command", "run_generate"]
