"""`kinetoscope demo`: a Gradio app for every generation mode of the pipeline.

Two layers, so the app is testable without a browser:

- `Demo` holds the loaded pipeline, the limits and the history. `Demo.run(Request)` checks a
  request against the limits and the grid, generates, writes the result and records it; every
  refusal is a `ValueError` whose message the page shows as it is.
- `build_app(demo)` lays out the page (one tab per mode, shared settings) and wires each
  "Generate" button to `Demo.run`, with a progress bar that follows the sampler's steps.

A mode appears only once the pipeline has it: text to video, animate an image (and loop),
extend a video, connect two videos, edit a video, long videos and storyboards.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from kinetoscope import conditioning
from kinetoscope.conditioning import SINGLE_PASS_FRAMES, load_frames, output_size
from kinetoscope.io import write_image, write_video
from kinetoscope.pipeline import DEFAULT_GUIDANCE, DEFAULT_SIZE, DEFAULT_STEPS, Pipeline
from kinetoscope.text.expand import PromptExpander

MODES = {
    "text": "Text to video",
    "animate": "Animate an image",
    "extend": "Extend a video",
    "connect": "Connect two videos",
    "edit": "Edit a video",
    "storyboard": "Storyboard",
}
INPUT_SIZE = "the input's own size"
SIZE_PRESETS = {  # aspect ratio -> (width, height) on the 16-pixel grid
    "3:2 (96x64)": (96, 64),
    "1:1 (64x64)": (64, 64),
    "2:3 (64x96)": (64, 96),
    "2:1 (128x64)": (128, 64),
    "4:3 (128x96)": (128, 96),
    "1:1 (128x128)": (128, 128),
    "16:9 (256x144)": (256, 144),
    "custom": None,
}
FPS = 8  # the world model's frame rate


@dataclass(frozen=True)
class Limits:
    """What one request may ask, so that no request can exhaust the machine."""

    max_side: int = 256  # pixels on either side: a 256 px video takes minutes on a laptop CPU
    max_frames: int = 257  # frames of a result; long videos are made window by window
    max_steps: int = 100  # sampler steps a window


@dataclass
class Request:
    """One generation as the page asks it (the API of the app's handlers)."""

    mode: str = "text"
    prompt: str = ""
    negative: str = ""
    size: str = next(iter(SIZE_PRESETS))  # a key of SIZE_PRESETS, or INPUT_SIZE
    width: int | None = None  # with size "custom"
    height: int | None = None
    frames: int = DEFAULT_SIZE[2]  # of the video; to add (extend); of the transition (connect)
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    seed: int = -1  # -1: a random seed, shown after the run
    sampler: str = "euler"
    output: str = "mp4"  # mp4 or gif; png for a single frame
    image: str | None = None  # animate
    loop: bool = False  # animate, or text
    video: str | None = None  # extend, edit, connect (first)
    second: str | None = None  # connect
    direction: str = "forward"  # extend
    strength: float = conditioning.DEFAULT_STRENGTH  # edit
    storyboard: str = ""  # "FRAMES PROMPT" lines
    expand: bool = False  # rewrite the prompt(s) in the training captions' style first


@dataclass
class Result:
    """What a run made: the file, a playable mp4 (for videos), and how."""

    path: Path
    playable: Path | None  # the mp4 the page plays (None for an image)
    seed: int
    summary: str
    settings: dict = field(default_factory=dict)


class Demo:
    """The app's state: the pipeline, the limits, where results go, and their history."""

    def __init__(self, pipe: Pipeline, out_dir: str | Path, limits: Limits = Limits()) -> None:
        self.pipe = pipe
        self.limits = limits
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.history: list[Result] = []
        self._lock = threading.Lock()  # history and file numbering across queue workers

    # -- checks ------------------------------------------------------------------------------

    def check(self, request: Request) -> Request:
        """The request with its size resolved; ValueError (shown in the page) if refused."""
        limits = self.limits
        if request.mode not in MODES:
            raise ValueError(f"unknown mode {request.mode!r}; choose one of {', '.join(MODES)}")
        if request.mode != "storyboard" and not request.prompt.strip():
            raise ValueError("Write a prompt: what the video shows.")
        if not 1 <= int(request.steps) <= limits.max_steps:
            raise ValueError(f"Steps must be from 1 to {limits.max_steps}.")
        if request.output not in ("mp4", "gif", "png"):
            raise ValueError("Choose mp4, gif or png as the output.")
        width, height = self._size(request)
        for name, side in (("Width", width), ("Height", height)):
            if side is not None and not 16 <= side <= limits.max_side:
                raise ValueError(f"{name} must be from 16 to {limits.max_side} pixels, not {side}.")
        total = self._total_frames(request)
        if total > limits.max_frames:
            raise ValueError(
                f"That makes {total} frames; this demo allows at most {limits.max_frames}."
            )
        if request.output == "png" and total != 1:
            raise ValueError("PNG is for a single frame; choose mp4 or gif for a video.")
        seed = random.randrange(2**31) if int(request.seed) < 0 else int(request.seed)
        return replace(request, width=width, height=height, seed=seed)

    def _size(self, request: Request) -> tuple[int | None, int | None]:
        """(width, height) asked: a preset, custom, or the input's own (then measured)."""
        if request.size == "custom":
            if request.width is None or request.height is None:
                raise ValueError("Give a width and a height for a custom size.")
            return int(request.width), int(request.height)
        if request.size in SIZE_PRESETS:
            return SIZE_PRESETS[request.size]
        if request.size != INPUT_SIZE:
            raise ValueError(f"Unknown size {request.size!r}.")
        source = request.image if request.mode == "animate" else request.video
        if request.mode in ("text", "storyboard") or source is None:
            return DEFAULT_SIZE[:2]
        frames = load_frames(source, "the upload")[:1]
        return output_size(frames, None, None, self.pipe.vae.config.size_multiple)

    def _total_frames(self, request: Request) -> int:
        """Frames of the result (inputs included), to hold against the limit."""
        frames = int(request.frames)
        if request.mode == "storyboard":
            return sum(n for _, n in _storyboard(request.storyboard))
        if request.mode in ("extend", "connect", "edit"):
            if request.video is None or (request.mode == "connect" and request.second is None):
                raise ValueError("Upload the video(s) this mode starts from.")
            inputs = [request.video] + ([request.second] if request.mode == "connect" else [])
            given = sum(len(load_frames(path, "the upload")) for path in inputs)
            return given if request.mode == "edit" else given + frames
        if request.mode == "animate" and request.image is None:
            raise ValueError("Upload an image to animate.")
        return frames

    # -- running -----------------------------------------------------------------------------

    def run(self, request: Request, progress: bool = True) -> Result:
        """Check, generate, write and record one request."""
        request = self.check(request)
        options = {"steps": int(request.steps), "guidance": float(request.guidance),
                   "seed": request.seed, "sampler": request.sampler,
                   "negative": request.negative, "progress": progress,
                   "width": request.width, "height": request.height}  # fmt: skip
        start = time.perf_counter()
        request, expanded = self._expanded(request)
        made = _generate(self.pipe, request, options)
        seconds = time.perf_counter() - start
        with self._lock:
            number = len(self.history) + 1
            stem = self.out_dir / f"{number:04d}-{request.mode}"
            path, playable = _write(made.video, stem, request.output)
            height, width = made.video.shape[1:3]
            stages = ", ".join(f"{k} {v:.1f} s" for k, v in made.timings.items())
            summary = (
                f"{MODES[request.mode]}: {width}x{height}, {len(made.video)} frames "
                f"({made.given} given, {made.generated} generated), seed {request.seed}, "
                f"{request.steps} {request.sampler} steps, guidance {request.guidance:g}; "
                f"took {seconds:.1f} s ({stages})"
            )
            summary += "".join(f"; {note}" for note in made.notes)
            summary += "".join(f"\n\nexpanded prompt: {text}" for text in expanded)
            result = Result(path, playable, request.seed, summary, _settings(request))
            self.history.append(result)
        return result

    def _expanded(self, request: Request) -> tuple[Request, list[str]]:
        """The request with its prompt(s) expanded when asked (the pipeline's expander), and
        the expanded prompts."""
        if not request.expand:
            return request, []
        if self.pipe.expander is None:
            self.pipe.expander = PromptExpander.load()
        expand, seed = self.pipe.expander.expand, request.seed
        if request.mode == "storyboard":
            segments = [(expand(p, seed=seed + i), n)
                        for i, (p, n) in enumerate(_storyboard(request.storyboard))]  # fmt: skip
            text = "\n".join(f"{n} {p}" for p, n in segments)
            return replace(request, storyboard=text), [p for p, _ in segments]
        prompt = expand(request.prompt, seed=seed, video=self._total_frames(request) > 1)
        return replace(request, prompt=prompt), [prompt]

    def gallery(self) -> list[tuple[str, str]]:
        """(thumbnail, caption) of every result so far, newest first."""
        items = []
        for result in reversed(self.history):
            thumbnail = result.path.with_suffix(".thumb.png")
            settings = result.settings
            caption = (
                f"seed {result.seed}: {settings.get('prompt', settings.get('storyboard', ''))} | "
                + ", ".join(f"{k} {v}" for k, v in settings.items()
                            if k not in ("prompt", "storyboard", "seed"))
            )  # fmt: skip
            items.append((str(thumbnail), caption))
        return items


def _storyboard(text: str) -> list[tuple[str, int]]:
    return conditioning.parse_storyboard(text, "Storyboard")


def _generate(pipe: Pipeline, request: Request, options: dict) -> conditioning.Prompted:
    """The mode's call into `kinetoscope.conditioning`."""
    prompt, frames = request.prompt, int(request.frames)
    if request.mode == "text" and request.loop:
        return conditioning.loop(pipe, prompt, frames=frames, **options)
    if request.mode == "text":
        return conditioning.text_to_video(pipe, prompt, frames=frames, **options)
    if request.mode == "animate":
        return conditioning.animate(pipe, prompt, request.image, frames=frames,
                                    loop=request.loop, **options)  # fmt: skip
    if request.mode == "extend":
        return conditioning.extend(pipe, prompt, request.video, frames=frames,
                                   direction=request.direction, **options)  # fmt: skip
    if request.mode == "connect":
        return conditioning.connect(pipe, prompt, request.video, request.second, frames=frames,
                                    **options)  # fmt: skip
    if request.mode == "edit":
        return conditioning.edit(pipe, prompt, request.video, strength=float(request.strength),
                                 **options)  # fmt: skip
    return conditioning.long_video(pipe, _storyboard(request.storyboard), **options)


def _write(video: np.ndarray, stem: Path, output: str) -> tuple[Path, Path | None]:
    """The result in its format, an mp4 the page plays (videos), and a thumbnail."""
    write_image(stem.with_suffix(".thumb.png"), video[len(video) // 2])
    if len(video) == 1 and output == "png":
        return write_image(stem.with_suffix(".png"), video[0]), None
    if len(video) == 1 and output == "gif":
        return write_video(stem.with_suffix(".gif"), video, FPS), None
    playable = write_video(stem.with_suffix(".mp4"), video, FPS)
    if output == "gif":
        return write_video(stem.with_suffix(".gif"), video, FPS), playable
    return playable, playable


def _settings(request: Request) -> dict:
    """The request as a JSON-ready dict, uploads by file name."""
    settings = asdict(request)
    for key in ("image", "video", "second"):
        if settings[key] is not None:
            settings[key] = Path(settings[key]).name
    return {key: value for key, value in settings.items() if value not in (None, "")}


__all__ = ["FPS", "INPUT_SIZE", "MODES", "SINGLE_PASS_FRAMES", "SIZE_PRESETS", "Demo",
           "Limits", "Request", "Result"]  # fmt: skip
