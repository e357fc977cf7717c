"""Image and video prompting: every mode as a choice of given frames, on tiny models."""

from pathlib import Path

import numpy as np
import pytest
import torch

from kinetoscope import conditioning as C
from kinetoscope.cli import main
from kinetoscope.dit import DIT_PRESETS, DiT
from kinetoscope.io import probe, read_video, write_video
from kinetoscope.pipeline import Given, Pipeline
from kinetoscope.text import TinyTextEncoder
from kinetoscope.train.dit import train_dit
from kinetoscope.vae import VAE_PRESETS, VideoVAE

pytestmark = [
    pytest.mark.filterwarnings("ignore:prompts longer than"),
    pytest.mark.usefixtures("one_thread"),
]

FAST = {"steps": 2, "progress": False}


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    """Tiny parts in memory with every DiT weight perturbed, so outputs depend on inputs."""
    torch.manual_seed(0)
    dit = DiT(DIT_PRESETS["tiny"])
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return Pipeline(dit, VideoVAE(VAE_PRESETS["tiny"]), TinyTextEncoder(), precision="fp32")


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    """An 11-frame 64x48 video: a bright square moving right on a dark ground."""
    video = np.full((11, 48, 64, 3), 20, np.uint8)
    for t in range(11):
        video[t, 16:32, 4 + 3 * t : 20 + 3 * t] = (220, 40, 40)
    return video


def test_given_placements_fill_whole_latent_frames():
    image = np.zeros((1, 16, 16, 3), np.uint8)
    assert Given(np.zeros((9, 16, 16, 3), np.uint8), 0).latent_frames(17) == [0, 1, 2]
    assert Given(np.zeros((8, 16, 16, 3), np.uint8), 9).latent_frames(17) == [3, 4]
    assert Given(image, 0).latent_frames(17) == [0]
    assert Given(image, 13).latent_frames(17) == [4]  # held for frames 13-16
    assert len(Given(image, 13).held()) == 4
    with pytest.raises(ValueError, match="do not fill whole latent frames"):
        Given(np.zeros((8, 16, 16, 3), np.uint8), 0).latent_frames(17)
    with pytest.raises(ValueError, match="starting at frame 1 \\+ 4j"):
        Given(image, 3).latent_frames(17)
    with pytest.raises(ValueError, match="run past"):
        Given(image, 17).latent_frames(17)
    with pytest.raises(ValueError, match="T H W 3 uint8"):
        Given(np.zeros((16, 16, 3), np.uint8))


def test_fit_frames_covers_then_centre_crops():
    frames = np.zeros((2, 40, 120, 3), np.uint8)
    frames[:, :, 40:80] = 255  # a white band in the middle third
    fitted = C.fit_frames(frames, 48, 32)  # scaled by 0.8 to 96x32, cropped 24 px each side
    assert fitted.shape == (2, 32, 48, 3)
    assert fitted[:, :, 24].min() == 255 and fitted[:, :, 0].max() == 0
    assert C.fit_frames(frames, 120, 40) is frames  # already the size: untouched
    assert C.output_size(frames, None, None, 16) == (128, 32)
    assert C.output_size(frames, 96, None, 16) == (96, 32)  # keeps the aspect ratio


def test_animate_keeps_the_image_as_frame_zero_and_is_deterministic(pipe, clip):
    image = clip[0]
    a = C.animate(pipe, "a red square moving right", image, frames=9, **FAST)
    b = C.animate(pipe, "a red square moving right", image, frames=9, **FAST)
    c = C.animate(pipe, "a red square moving right", image, frames=9, seed=1, **FAST)
    assert a.video.shape == (9, 48, 64, 3) and (a.mode, a.given, a.generated) == ("animate", 1, 8)
    assert np.array_equal(a.video[0], image)  # verbatim, not through the VAE
    assert np.array_equal(a.video, b.video) and not np.array_equal(a.video, c.video)


def test_given_tokens_are_never_moved_by_the_sampler(pipe, clip):
    seen = []
    given = [Given(clip[:5], 0)]
    pipe.generate("x", width=64, height=48, frames=13, given=given, callback=seen.append, **FAST)
    held = seen[0].t == 0  # given tokens (and padding) sit at t = 0 throughout
    assert held.sum() > 0 and (~held).sum() > 0
    first = seen[0].x[held]
    assert all(torch.equal(step.x[held], first) for step in seen)


def test_loop_ends_leading_back_into_its_first_frame(pipe, clip):
    out = C.loop(pipe, "a red square", clip[0], frames=9, **FAST)
    assert out.video.shape == (9, 48, 64, 3) and out.mode == "loop"
    assert np.array_equal(out.video[0], clip[0])
    from_text = C.loop(pipe, "a red square", frames=9, width=32, height=32, **FAST)
    assert from_text.video.shape == (9, 32, 32, 3) and "first frame" in from_text.notes[0]


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("frames", [7, 60])  # one window, and several
def test_extend_keeps_the_video_verbatim_and_adds_frames(pipe, clip, direction, frames):
    out = C.extend(pipe, "x", clip, frames=frames, direction=direction, **FAST)
    assert out.video.shape == (11 + frames, 48, 64, 3)
    kept = out.video[:11] if direction == "forward" else out.video[frames:]
    assert np.array_equal(kept, clip)
    assert (out.given, out.generated) == (11, frames)


def test_extend_works_from_a_single_frame_backward(pipe, clip):
    out = C.extend(pipe, "x", clip[:1], frames=5, direction="backward", **FAST)
    assert out.video.shape == (6, 48, 64, 3) and np.array_equal(out.video[-1], clip[0])


def test_connect_puts_a_transition_between_two_videos(pipe, clip):
    other = clip[::-1].copy()
    out = C.connect(pipe, "x", clip, other, frames=8, **FAST)
    assert out.video.shape == (11 + 8 + 11, 48, 64, 3)
    assert np.array_equal(out.video[:11], clip) and np.array_equal(out.video[19:], other)
    with pytest.raises(ValueError, match="got 6, use 4 or 8"):
        C.connect(pipe, "x", clip, other, frames=6, **FAST)


def test_edit_strength_ends_are_the_input_and_plain_generation(pipe, clip):
    video = clip[:9]
    unchanged = C.edit(pipe, "x", video, strength=0, **FAST)
    assert np.array_equal(unchanged.video, video) and unchanged.generated == 0
    ignored = C.edit(pipe, "x", video, strength=1, **FAST)
    [plain] = pipe.generate("x", width=64, height=48, frames=9, **FAST)
    assert np.array_equal(ignored.video, plain)
    half = C.edit(pipe, "x", video, strength=0.5, **FAST)
    assert not np.array_equal(half.video, plain) and not np.array_equal(half.video, video)
    trimmed = C.edit(pipe, "x", clip, strength=0.5, **FAST)
    assert len(trimmed.video) == 9 and "kept the first 9 of 11" in trimmed.notes[0]
    with pytest.raises(ValueError, match="strength must be a number in \\[0, 1\\]"):
        C.edit(pipe, "x", video, strength=1.5, **FAST)


def test_long_videos_and_storyboards_have_every_frame(pipe):
    long = C.text_to_video(pipe, "x", width=32, height=32, frames=101, **FAST)
    assert long.video.shape == (101, 32, 32, 3) and long.mode == "long video"
    story = C.long_video(pipe, [("a", 20), ("b", 30)], width=32, height=32, **FAST)
    assert story.video.shape == (50, 32, 32, 3) and story.mode == "storyboard"
    with pytest.raises(ValueError, match="segment 2's frames must be a positive integer"):
        C.long_video(pipe, [("a", 20), ("b", 0)], **FAST)


def test_storyboard_files_name_the_bad_line(tmp_path):
    path = tmp_path / "story.txt"
    path.write_text("# a storyboard\n33 a red circle moving right\n\n16 it stops\n")
    assert C.read_storyboard(path) == [("a red circle moving right", 33), ("it stops", 16)]
    path.write_text("33 a red circle\nsixteen it stops\n")
    with pytest.raises(ValueError, match="line 2: expected 'FRAMES PROMPT'"):
        C.read_storyboard(path)


def test_seam_ratio_compares_a_seam_with_the_motion_inside(clip):
    jump = np.concatenate([clip, clip[:1]])  # back to the start: a large jump at frame 11
    assert C.seam_ratio(jump, [11], clip) > 3
    assert C.seam_ratio(clip, [5], clip) == pytest.approx(1.0)


def test_conditioning_is_refused_before_any_sampling(pipe, clip, tmp_path):
    calls = []
    handle = pipe.dit.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(ValueError, match="not both"):
            pipe.generate("x", width=64, height=48, frames=9, given=[Given(clip[:1])],
                          edit=clip[:9], **FAST)  # fmt: skip
        with pytest.raises(ValueError, match="fit it first"):
            pipe.generate("x", width=32, height=32, frames=9, edit=clip[:9], **FAST)
        with pytest.raises(ValueError, match="one size"):
            pipe.generate(["a", "b"], sizes=[(64, 48, 9), (32, 32, 9)], given=[Given(clip[:1])])
        with pytest.raises(ValueError, match="cannot read|not exist|No such"):
            C.animate(pipe, "x", tmp_path / "missing.png", **FAST)
        with pytest.raises(ValueError, match="multiple of 16"):
            C.animate(pipe, "x", clip[0], width=50, **FAST)
        for image in (clip[0], None):  # a one-frame loop has nothing to loop through
            with pytest.raises(ValueError, match="--frames 5 or more, got 1"):
                C.loop(pipe, "x", image, frames=1, **FAST)
        with pytest.raises(ValueError, match="--frames 5 or more, got 1"):
            C.animate(pipe, "x", clip[0], frames=1, loop=True, **FAST)
    finally:
        handle.remove()
    assert calls == []


# ---------------------------------------------------------------------------------------------
# The CLI


@pytest.fixture(scope="module")
def run(tiny_world, tmp_path_factory) -> Path:
    manifest, vae = tiny_world
    root = tmp_path_factory.mktemp("conditioning-run")
    train_dit(manifest, root / "run", vae=vae, preset="tiny", steps=1, max_frames=9,
              warmup=1, preview_every=0, progress=False)  # fmt: skip
    return root / "run"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, clip) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    paths = {"video": write_video(root / "clip.mkv", clip, 8), "other": root / "other.mkv"}
    write_video(paths["other"], clip[::-1].copy(), 8)
    paths["image"] = root / "first.png"
    write_video(paths["image"], clip[:1], 8)
    paths["story"] = root / "story.txt"
    paths["story"].write_text("9 a red circle moving right\n12 a red circle falling\n")
    return paths


@pytest.mark.parametrize(
    ("options", "frames"),
    [
        (["--image", "{image}", "--frames", "9"], 9),
        (["--image", "{image}", "--loop", "--frames", "9"], 9),
        (["--loop", "--frames", "5", "--width", "32", "--height", "32"], 5),
        (["--video", "{video}", "--frames", "6"], 17),
        (["--video", "{video}", "--extend", "backward", "--frames", "6"], 17),
        (["--connect", "{video}", "{other}", "--frames", "4"], 26),
        (["--edit", "{video}", "--strength", "0.5"], 9),
        (["--storyboard", "{story}"], 21),
        (["--frames", "70", "--width", "32", "--height", "32"], 70),
    ],
)
def test_cli_generates_in_every_mode(run, inputs, tmp_path, capsys, options, frames):
    out = tmp_path / "out.mp4"
    options = [o.format(**inputs) for o in options]
    prompt = [] if "--storyboard" in options else ["a red circle moving right"]
    argv = ["generate", *prompt, "--model", str(run), "--steps", "1", "--out", str(out)]
    assert main([*argv, *options]) == 0
    printed = capsys.readouterr().out
    assert probe(out).frames == frames and "took" in printed
    if "--video" in options or "--image" in options:
        assert "frames given" in printed
    if "--edit" in options:
        assert "kept the first 9 of 11 frames" in printed
    if any(flag in options for flag in ("--image", "--video", "--connect", "--edit")):
        assert read_video(out).shape[1:] == (48, 64, 3)  # the input's own size


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--image", "{image}", "--video", "{video}"], "choose one of --image or --video"),
        (["--video", "{video}", "--loop"], "--loop makes a looping video"),
        (["--extend", "forward"], "--extend needs --video"),
        (["--strength", "0.5"], "--strength needs --edit"),
        (["--image", "{missing}"], "missing.png"),
        (["--storyboard", "{story}", "--frames", "9"], "drop --frames"),
        (["--storyboard", "{story}"], "drop PROMPT"),
        (["--image", "{image}", "--width", "50"], "use 48 or 64"),
        (["--connect", "{video}", "{other}", "--frames", "5"], "use 4 or 8"),
        (["--edit", "{video}", "--strength", "2"], "strength must be a number in [0, 1]"),
    ],
)
def test_cli_refuses_conflicting_or_bad_prompts(run, inputs, tmp_path, capsys, options, message):
    out = tmp_path / "out.mp4"
    options = [o.format(missing=tmp_path / "missing.png", **inputs) for o in options]
    prompt = [] if message == "drop --frames" else ["x"]
    argv = ["generate", *prompt, "--model", str(run), "--steps", "1", "--out", str(out), *options]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()
