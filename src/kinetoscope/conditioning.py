"""Image and video prompting: each mode is a choice of given frames for `Pipeline.generate`.

    pipe = Pipeline.load()
    out = animate(pipe, "a red circle moving right", "first.png", frames=17)
    out = extend(pipe, "the circle keeps moving", "clip.mp4", frames=16)   # 16 more frames
    write_video("out.mp4", out.video, fps=8)

The causal VAE codes frame 0 alone and then groups of 4 frames, so given frames fill whole
latent frames (`pipeline.Given`): a clip at frame 0 has 1 + 4m frames, a later one starts a
group and has 4m frames, and an image given later than frame 0 is held for a group. How each
mode maps pixel frames to latent frames (m = `CONTEXT_GROUPS`):

| mode | given | sampled | output |
| --- | --- | --- | --- |
| animate | the image at frame 0 (latent 0) | F = 1 + 4k frames | the image, then F - 1 new frames |
| loop | the image at 0, and held for a group past the end | F + 4 | the first F frames: the last leads back into the first |
| extend forward by N | the video's last 1 + 4m frames at 0 | 1 + 4m + 4n, 4n >= N | the video, then N new frames |
| extend backward by N | the video's first 4m frames at the end | 1 + 4n + 4m, 1 + 4n >= N | N new frames, then the video |
| connect A, B by N | A's last 1 + 4m frames at 0, B's first 4m at the end | 1 + 4m + N + 4m, N = 4n | A, N new frames, B |
| edit (SDEdit) | none: the video, noised to `strength` | its 1 + 4k frames | the edited video |
| long video, storyboard | a window of F frames, then extend forward window after window | one window at a time | every window's new frames |

A loop without an image first generates its first frame from the prompt. Inputs of any size
are fitted to the output size (resized to cover it, then centre-cropped; `fit_frames`); the
output size defaults to the input's own, rounded to the model's multiple. The user's frames
come back verbatim in the output, not re-encoded through the VAE. Memory is that of one window
whatever the length: a long video is made window by window, and only its uint8 frames grow.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kinetoscope.io import VideoReadError, read_video
from kinetoscope.pipeline import DEFAULT_SIZE, DEFAULT_STRENGTH, Given, Pipeline

CONTEXT_GROUPS = (
    2  # latent groups of an input that a continuation sees: 9 frames, about 1 s at 8 fps
)
WINDOW_FRAMES = (
    33  # frames sampled at once by long videos: the world model's longest training clips
)
SINGLE_PASS_FRAMES = 65  # text to video up to this many frames is sampled in one pass, as trained
MAX_FRAMES = 100_000  # a sanity bound on requested lengths (long videos cost a window each)

Frames = np.ndarray | str | os.PathLike  # T H W 3 uint8 (or H W 3 for an image), or a file


@dataclass
class Prompted:
    """A generated video and what went into it."""

    video: np.ndarray  # T H W 3 uint8, the whole output
    mode: str
    given: int  # output frames that are the user's own
    generated: int  # output frames the model made
    notes: list[str] = field(default_factory=list)  # what was done to the inputs
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, summed

    def add(self, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            self.timings[stage] = self.timings.get(stage, 0.0) + seconds


# ---------------------------------------------------------------------------------------------
# Inputs


def load_frames(source: Frames, what: str = "input") -> np.ndarray:
    """`T H W 3` uint8 frames of an array (an `H W 3` image becomes one frame) or a file."""
    if isinstance(source, str | os.PathLike):
        try:
            return read_video(source)
        except VideoReadError as error:
            raise ValueError(f"{what}: {error}") from None
    if isinstance(source, np.ndarray) and source.dtype == np.uint8 and source.shape[-1:] == (3,):
        if source.ndim == 3:
            return source[None]
        if source.ndim == 4 and len(source):
            return source
    raise ValueError(
        f"{what} must be a file or a T H W 3 (or H W 3) uint8 array, got "
        f"{type(source).__name__} {getattr(source, 'shape', '')}"
    )


def output_size(
    frames: np.ndarray, width: int | None, height: int | None, multiple: int
) -> tuple[int, int]:
    """(width, height) of the output: as asked (checked later, never rounded), else the
    input's own (the other side keeping its aspect ratio when one is asked), rounded to
    `multiple` (at least one multiple)."""
    in_height, in_width = frames.shape[1:3]
    if width is None and height is None:
        return _round_to(in_width, multiple), _round_to(in_height, multiple)
    if width is None:
        width = _round_to(in_width * height / in_height, multiple)
    if height is None:
        height = _round_to(in_height * width / in_width, multiple)
    return width, height


def _round_to(size: float, multiple: int) -> int:
    return max(multiple, multiple * round(size / multiple))


def fit_frames(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """`frames` (T H W 3 uint8) resized to cover width x height (one scale for both sides,
    antialiased bilinear), then centre-cropped to it; unchanged when already that size."""
    in_height, in_width = frames.shape[1:3]
    if (in_width, in_height) == (width, height):
        return frames
    scale = max(width / in_width, height / in_height)
    size = (max(height, round(in_height * scale)), max(width, round(in_width * scale)))
    out = np.empty((len(frames), height, width, 3), np.uint8)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    for start in range(0, len(frames), 16):  # a few frames at a time: memory stays flat
        video = torch.from_numpy(frames[start : start + 16]).permute(0, 3, 1, 2).float()
        resized = F.interpolate(video, size=size, mode="bilinear", antialias=True)
        crop = resized[:, :, top : top + height, left : left + width]
        out[start : start + 16] = crop.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return out


def _fitted(
    source: Frames, what: str, width: int | None, height: int | None, pipe: Pipeline, notes
) -> np.ndarray:
    """The input's frames at the output size (its own size when none is asked), noting a fit."""
    frames = load_frames(source, what)
    multiple = pipe.vae.config.size_multiple
    width, height = output_size(frames, width, height, multiple)
    pipe.check_sizes([(width, height, 1)])  # an asked size off the grid is refused, not fitted
    fitted = fit_frames(frames, width, height)
    if fitted is not frames:
        name = source if isinstance(source, str | os.PathLike) else what
        notes.append(
            f"fitted {name} from {frames.shape[2]}x{frames.shape[1]} to {width}x{height} "
            "(resized to cover, centre-cropped)"
        )
    return fitted


def _check_count(frames: object, what: str = "frames") -> int:
    if not isinstance(frames, int | np.integer) or isinstance(frames, bool) or frames < 1:
        raise ValueError(f"{what} must be a positive integer, got {frames!r}")
    if frames > MAX_FRAMES:
        raise ValueError(f"{what} must be at most {MAX_FRAMES}, got {frames}")
    return int(frames)


def _check_loop(frames: object) -> int:
    """A loop's frame count: one frame has nothing to loop through."""
    if _check_count(frames) < 5:
        raise ValueError(
            f"a loop needs frames to move through: give --frames 5 or more, got {frames}"
        )
    return int(frames)


def _group_up(frames: int) -> int:
    """The smallest multiple of 4 that is at least `frames`."""
    return 4 * math.ceil(frames / 4)


# ---------------------------------------------------------------------------------------------
# Modes


def _sample(pipe: Pipeline, prompt: str, size, result: Prompted, **options) -> np.ndarray:
    """One `generate` call at `size` (width, height, frames); its timings added to `result`."""
    [video] = pipe.generate(prompt, sizes=[size], **options)
    result.add(pipe.timings)
    return video


def text_to_video(
    pipe: Pipeline, prompt: str, *, width: int | None = None, height: int | None = None,
    frames: int | None = None, **options,
) -> Prompted:  # fmt: skip
    """Plain text to video, made window by window past `SINGLE_PASS_FRAMES` (then any count)."""
    w, h, f = DEFAULT_SIZE
    width, height = width or w, height or h
    frames = _check_count(f if frames is None else frames)
    if frames <= SINGLE_PASS_FRAMES:  # sizes off the grid are refused by `generate`
        result = Prompted(np.empty(0, np.uint8), "text-to-video", 0, frames)
        result.video = _sample(pipe, prompt, (width, height, frames), result, **options)
        return result
    return long_video(pipe, [(prompt, frames)], width=width, height=height, **options)


def animate(
    pipe: Pipeline, prompt: str, image: Frames, *, frames: int = DEFAULT_SIZE[2],
    width: int | None = None, height: int | None = None, loop: bool = False, **options,
) -> Prompted:  # fmt: skip
    """The image (its first frame for a video) as frame 0 of a `frames`-frame video (1 + 4k);
    with `loop`, a video whose last frame leads back into the image."""
    frames = _check_loop(frames) if loop else _check_count(frames)
    result = Prompted(np.empty(0, np.uint8), "loop" if loop else "animate", 1, frames - 1)
    first = _fitted(image, "image", width, height, pipe, result.notes)[:1]  # 1 H W 3
    size = (first.shape[2], first.shape[1], frames)
    pipe.check_sizes([size])
    if not loop:
        given = [Given(first, 0)]
        result.video = _sample(pipe, prompt, size, result, given=given, **options)
        return result
    # The image again, held for a group just past the end: the last kept frame leads into it.
    looped = (size[0], size[1], frames + 4)
    given = [Given(first, 0), Given(first, frames)]
    result.video = _sample(pipe, prompt, looped, result, given=given, **options)[:frames]
    return result


def loop(
    pipe: Pipeline, prompt: str, image: Frames | None = None, *, frames: int = DEFAULT_SIZE[2],
    width: int | None = None, height: int | None = None, **options,
) -> Prompted:  # fmt: skip
    """A seamless loop of `frames` frames; its first frame is `image`, or one generated from
    the prompt first."""
    notes = []
    _check_loop(frames)  # before a first frame is made from the prompt
    if image is None:
        w, h, _ = DEFAULT_SIZE
        size = (width or w, height or h, 1)
        [image] = pipe.generate(prompt, sizes=[size], **options)
        notes.append("generated the first frame from the prompt")
        timings = dict(pipe.timings)
    result = animate(pipe, prompt, image, frames=frames, width=width, height=height,
                     loop=True, **options)  # fmt: skip
    if notes:
        result.notes += notes
        result.add(timings)
        result.given, result.generated = 0, frames
    return result


def extend(
    pipe: Pipeline, prompt: str, video: Frames, *, frames: int, direction: str = "forward",
    width: int | None = None, height: int | None = None, **options,
) -> Prompted:  # fmt: skip
    """The video with `frames` new frames after its end (forward) or before its start
    (backward), made window by window past `WINDOW_FRAMES`."""
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    frames = _check_count(frames)
    result = Prompted(np.empty(0, np.uint8), f"extend {direction}", 0, frames)
    clip = _fitted(video, "video", width, height, pipe, result.notes)
    result.given = len(clip)
    if direction == "forward":
        result.video = _continue(pipe, [(prompt, frames)], clip, result, **options)
    else:  # backward: extend the reversed video's start, one window at a time, from its start
        result.video = _backward(pipe, prompt, clip, frames, result, **options)
    return result


def _continue(
    pipe: Pipeline, segments: Sequence[tuple[str, int]], video: np.ndarray, result: Prompted,
    seed: int = 0, **options,
) -> np.ndarray:  # fmt: skip
    """`video` followed by each segment's frames, each window continuing from the last
    1 + 4m frames; memory of one window, the output preallocated."""
    total = len(video) + sum(count for _, count in segments)
    out = np.empty((total, *video.shape[1:]), np.uint8)
    out[: len(video)] = video
    end, window = len(video), 0
    height, width = video.shape[1:3]
    for prompt, count in segments:
        left = count
        while left > 0:
            context = out[max(0, end - 1 - 4 * CONTEXT_GROUPS) : end]
            context = context[(len(context) - 1) % 4 :]  # 1 + 4m frames
            new = min(_group_up(left), _group_up(WINDOW_FRAMES - len(context)))
            size = (width, height, len(context) + new)
            sampled = _sample(pipe, prompt, size, result, given=[Given(context, 0)],
                              seed=seed + window, **options)  # fmt: skip
            keep = min(new, left)
            out[end : end + keep] = sampled[len(context) : len(context) + keep]
            end, left, window = end + keep, left - keep, window + 1
    return out


def _backward(
    pipe: Pipeline, prompt: str, video: np.ndarray, frames: int, result: Prompted,
    seed: int = 0, **options,
) -> np.ndarray:  # fmt: skip
    """`frames` new frames before `video`, window by window towards the past: each window
    ends with the first 4m frames it precedes (an image held for a group, for short inputs)."""
    out = np.empty((len(video) + frames, *video.shape[1:]), np.uint8)
    out[frames:] = video
    start, window = frames, 0
    height, width = video.shape[1:3]
    while start > 0:
        ahead = out[start : start + 4 * CONTEXT_GROUPS]
        ahead = ahead[: 4 * (len(ahead) // 4)] if len(ahead) >= 4 else ahead[:1]
        held = len(Given(ahead, 1).held())
        new = min(1 + _group_up(start - 1), 1 + _group_up(WINDOW_FRAMES - held - 1))
        size = (width, height, new + held)
        sampled = _sample(pipe, prompt, size, result, given=[Given(ahead, new)],
                          seed=seed + window, **options)  # fmt: skip
        keep = min(new, start)
        out[start - keep : start] = sampled[new - keep : new]
        start, window = start - keep, window + 1
    return out


def connect(
    pipe: Pipeline, prompt: str, first: Frames, second: Frames, *, frames: int,
    width: int | None = None, height: int | None = None, **options,
) -> Prompted:  # fmt: skip
    """`first`, then a generated transition of `frames` frames (a multiple of 4), then
    `second` (fitted to `first`'s size)."""
    frames = _check_count(frames)
    if frames % 4:
        low, high = frames - frames % 4, frames + 4 - frames % 4
        use = f"{high}" if low == 0 else f"{low} or {high}"
        raise ValueError(f"a transition fills whole groups of 4 frames: got {frames}, use {use}")
    result = Prompted(np.empty(0, np.uint8), "connect", 0, frames)
    a = _fitted(first, "first video", width, height, pipe, result.notes)
    b = _fitted(second, "second video", a.shape[2], a.shape[1], pipe, result.notes)
    head = a[(len(a) - 1) % 4 :][-(1 + 4 * CONTEXT_GROUPS) :]  # A's last 1 + 4m frames
    tail = b[: 4 * CONTEXT_GROUPS]
    tail = tail[: 4 * (len(tail) // 4)] if len(tail) >= 4 else tail[:1]
    held = len(Given(tail, 1).held())
    size = (a.shape[2], a.shape[1], len(head) + frames + held)
    given = [Given(head, 0), Given(tail, len(head) + frames)]
    sampled = _sample(pipe, prompt, size, result, given=given, **options)
    result.video = np.concatenate([a, sampled[len(head) : len(head) + frames], b])
    result.given = len(a) + len(b)
    return result


def edit(
    pipe: Pipeline, prompt: str, video: Frames, *, strength: float = DEFAULT_STRENGTH,
    width: int | None = None, height: int | None = None, **options,
) -> Prompted:  # fmt: skip
    """The video re-generated under `prompt` from `strength` of the way along the sampler
    (SDEdit): 0 returns it unchanged, 1 is plain text to video at its size and length."""
    result = Prompted(np.empty(0, np.uint8), "edit", 0, 0)
    clip = _fitted(video, "video", width, height, pipe, result.notes)
    if (len(clip) - 1) % 4:
        kept = 1 + 4 * ((len(clip) - 1) // 4)
        result.notes.append(f"kept the first {kept} of {len(clip)} frames (1 + 4k)")
        clip = clip[:kept]
    size = (clip.shape[2], clip.shape[1], len(clip))
    result.video = _sample(pipe, prompt, size, result, edit=clip, strength=strength, **options)
    result.generated = 0 if strength == 0 else len(clip)
    result.given = len(clip) - result.generated
    return result


def long_video(
    pipe: Pipeline, segments: Sequence[tuple[str, int]], *, width: int | None = None,
    height: int | None = None, image: Frames | None = None, **options,
) -> Prompted:  # fmt: skip
    """A video of `segments` (prompt, frames) one after another (a storyboard; one segment:
    a long video): the first window from text (or from `image`), then window after window,
    each continuing the last `1 + 4 * CONTEXT_GROUPS` frames."""
    segments = check_storyboard(segments)
    total = sum(count for _, count in segments)
    mode = "storyboard" if len(segments) > 1 else "long video"
    result = Prompted(np.empty(0, np.uint8), mode, 0, total)
    prompt, count = segments[0]
    first = min(WINDOW_FRAMES, 1 + 4 * ((count - 1) // 4))
    if image is not None:
        start = animate(pipe, prompt, image, frames=first, width=width, height=height, **options)
        result.notes += start.notes
        result.add(start.timings)
        result.given, result.generated = 1, total - 1
        opening = start.video
    else:
        w, h, _ = DEFAULT_SIZE
        opening = _sample(pipe, prompt, (width or w, height or h, first), result, **options)
    rest = [(prompt, count - first), *segments[1:]]
    seed = options.pop("seed", 0)
    result.video = _continue(pipe, [s for s in rest if s[1] > 0], opening, result,
                             seed=seed + 1, **options)  # fmt: skip
    return result


def check_storyboard(segments: object) -> list[tuple[str, int]]:
    """A non-empty list of (prompt, frames) pairs; ValueError naming the bad segment."""
    if isinstance(segments, str) or not isinstance(segments, Sequence) or not segments:
        raise ValueError("a storyboard is a non-empty list of (prompt, frames) segments")
    checked = []
    for i, segment in enumerate(segments):
        if not (
            isinstance(segment, Sequence) and len(segment) == 2 and isinstance(segment[0], str)
        ):
            raise ValueError(f"segment {i + 1} must be (prompt, frames), got {segment!r:.80}")
        checked.append((segment[0], _check_count(segment[1], f"segment {i + 1}'s frames")))
    return checked


def parse_storyboard(text: str, source: str = "the storyboard") -> list[tuple[str, int]]:
    """Segments of storyboard text: one `FRAMES PROMPT` per line ('#' starts a comment);
    ValueError naming `source` and the line for anything else."""
    segments = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        count, _, prompt = line.partition(" ")
        if not count.isdigit() or not prompt.strip():
            raise ValueError(
                f"{source}, line {number}: expected 'FRAMES PROMPT' (e.g. '33 a red circle "
                f"moving right'), got {line!r:.80}"
            )
        segments.append((prompt.strip(), int(count)))
    if not segments:
        raise ValueError(f"{source} has no segments; write one 'FRAMES PROMPT' per line")
    return check_storyboard(segments)


def read_storyboard(path: str | os.PathLike) -> list[tuple[str, int]]:
    """Segments of a storyboard file (see `parse_storyboard`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read storyboard {path}: {error}") from None
    return parse_storyboard(text, str(path))


def seam_ratio(video: np.ndarray, seams: Sequence[int], reference: np.ndarray) -> float:
    """The largest frame-to-frame change across `seams` (frame i - 1 -> i; 0 is the loop's
    last frame -> first) over the median change inside `reference` (mean absolute difference)."""

    def change(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())

    inside = [change(reference[i], reference[i + 1]) for i in range(len(reference) - 1)]
    median = max(float(np.median(inside)), 1e-6) if inside else 1e-6
    return max(change(video[i - 1], video[i]) for i in seams) / median


__all__ = [
    "CONTEXT_GROUPS",
    "SINGLE_PASS_FRAMES",
    "WINDOW_FRAMES",
    "Prompted",
    "animate",
    "check_storyboard",
    "connect",
    "edit",
    "extend",
    "fit_frames",
    "load_frames",
    "long_video",
    "loop",
    "output_size",
    "parse_storyboard",
    "read_storyboard",
    "seam_ratio",
    "text_to_video",
]
