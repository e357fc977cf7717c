"""Generation: loading a trained run, sizes, determinism, refusals, guidance, the CLI."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import kinetoscope.pipeline as pipeline_module
from kinetoscope.checkpoint import load_weights
from kinetoscope.cli import build_parser, main
from kinetoscope.diffusion import timestep_schedule, token_shift
from kinetoscope.dit import DIT_PRESETS, DiT
from kinetoscope.evaluate.world import suite, write_suite
from kinetoscope.io import probe, read_video
from kinetoscope.patches import unpack
from kinetoscope.pipeline import (
    DEFAULT_GUIDANCE,
    DEFAULT_SIZE,
    DEFAULT_STEPS,
    Pipeline,
    find_model,
)
from kinetoscope.text import TinyTextEncoder
from kinetoscope.train.dit import train_dit
from kinetoscope.vae import VAE_PRESETS, VideoVAE

# World captions run past the tiny test encoder's 64 tokens; its truncation warning is noise.
pytestmark = [
    pytest.mark.filterwarnings("ignore:prompts longer than"),
    pytest.mark.usefixtures("one_thread"),
]

FAST = {"steps": 2, "progress": False}


@pytest.fixture(scope="module")
def run(tiny_world, tmp_path_factory) -> Path:
    """A real training run folder: two steps of the tiny DiT on six small world clips."""
    manifest, vae = tiny_world
    root = tmp_path_factory.mktemp("pipeline-run")
    train_dit(manifest, root / "run", vae=vae, preset="tiny", steps=2, max_frames=9,
              lr=3e-3, warmup=1, preview_every=0, progress=False)  # fmt: skip
    return root / "run"


@pytest.fixture(scope="module")
def pipe(run) -> Pipeline:
    return Pipeline.load(run, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def random_pipe() -> Pipeline:
    """Tiny parts in memory with every DiT weight perturbed, so the text clearly matters."""
    torch.manual_seed(0)
    dit = DiT(DIT_PRESETS["tiny"])
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(0.1 * torch.randn_like(p))
    vae = VideoVAE(VAE_PRESETS["tiny"])
    return Pipeline(dit, vae, TinyTextEncoder(), device="cpu", precision="fp32")


def _count_dit_calls(pipe: Pipeline) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    """Sequences per DiT call, recorded by a forward pre-hook."""
    calls: list[int] = []
    handle = pipe.dit.register_forward_pre_hook(lambda _, args: calls.append(args[0].shape[0]))
    return calls, handle


# ---------------------------------------------------------------------------------------------
# Loading


def test_load_finds_the_ema_weights_vae_and_text_encoder_of_a_run(run, pipe, tmp_path):
    for folder in (run, run / "checkpoint", run / "checkpoint" / "ema"):
        files = find_model(folder)
        assert files.dit == run / "checkpoint" / "ema"
        assert files.vae == run / "vae"
        assert files.text_encoder == "tiny"
    assert isinstance(pipe.text, TinyTextEncoder)
    assert pipe.files is not None and pipe.files.meta["step"] == 2
    # The pipeline samples from the EMA weights, not the raw trained ones.
    ema, raw = DiT(pipe.dit.config), DiT(pipe.dit.config)
    load_weights(run / "checkpoint" / "ema", ema)
    load_weights(run / "checkpoint" / "model", raw)
    name = "final.linear.weight"
    assert torch.equal(pipe.dit.state_dict()[name], ema.state_dict()[name])
    assert not torch.equal(pipe.dit.state_dict()[name], raw.state_dict()[name])
    vae = VideoVAE(pipe.vae.config)
    load_weights(run / "vae", vae)
    assert torch.equal(pipe.vae.latent_scale, vae.latent_scale)
    # The meta names the VAE relative to the DiT's folder (the run's own copy), and no path of
    # the training machine: a run moved elsewhere loads whole.
    meta = json.loads((run / "checkpoint" / "ema" / "config.json").read_text())["meta"]
    assert meta["vae"] == "../../vae" and str(run.parent) not in json.dumps(meta)
    shutil.copytree(run, tmp_path / "moved")
    files = find_model(tmp_path / "moved")
    assert (files.dit, files.vae) == (tmp_path / "moved/checkpoint/ema", tmp_path / "moved/vae")
    # A DiT folder copied out of its run alone says where its VAE goes, or takes vae=.
    shutil.copytree(run / "checkpoint" / "ema", tmp_path / "dit")
    with pytest.raises(ValueError, match="pass vae=DIR"):
        find_model(tmp_path / "dit")
    assert find_model(tmp_path / "dit", vae=run / "vae").vae == run / "vae"


def test_a_run_saved_with_absolute_paths_in_its_meta_still_loads(run, tmp_path):
    # Runs saved before relative paths named their VAE where it was when they trained.
    old = tmp_path / "old"
    shutil.copytree(run, old)
    for part in ("model", "ema"):
        config = old / "checkpoint" / part / "config.json"
        document = json.loads(config.read_text())
        document["meta"]["vae"] = str(tmp_path / "gone" / "vae")  # moved or deleted since
        config.write_text(json.dumps(document))
    (old / "config.json").unlink()  # nor did they write the training config
    files = find_model(old)
    assert (files.dit, files.vae) == (old / "checkpoint" / "ema", old / "vae")  # the run's copy
    assert Pipeline.load(old, device="cpu", precision="fp32").dit is not None


def test_missing_models_are_user_errors_that_say_what_to_pass(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="does not exist"):
        find_model(tmp_path / "nothing")
    with pytest.raises(ValueError, match="holds no DiT"):
        find_model(tmp_path)
    import kinetoscope.model_folder as model_folder

    monkeypatch.setattr(model_folder, "default_model_dir", lambda: tmp_path / "world-dit")
    with pytest.raises(ValueError, match="pass --model DIR"):
        find_model()
    assert main(["generate", "a red circle", "--out", str(tmp_path / "x.mp4")]) == 2
    assert not (tmp_path / "x.mp4").exists()
    assert pipeline_module.default_model_dir().name == "world-dit"


def test_parts_that_do_not_fit_together_are_refused():
    dit = DiT(DIT_PRESETS["tiny"])
    with pytest.raises(ValueError, match="latent channels"):
        Pipeline(dit, VideoVAE(VAE_PRESETS["world"]), TinyTextEncoder())
    with pytest.raises(ValueError, match="text encoder"):
        Pipeline(dit, VideoVAE(VAE_PRESETS["tiny"]), TinyTextEncoder(dim=16))


# ---------------------------------------------------------------------------------------------
# Generating


def test_shapes_at_several_sizes_aspect_ratios_and_frame_counts(pipe):
    [image] = pipe.generate("a red circle", width=32, height=48, frames=1, **FAST)
    assert image.shape == (1, 48, 32, 3) and image.dtype == np.uint8
    sizes = [(64, 32, 9), (32, 64, 1), (48, 16, 5)]
    videos = pipe.generate(["a", "b", "c"], sizes=sizes, **FAST)
    assert [v.shape for v in videos] == [(f, h, w, 3) for w, h, f in sizes]
    assert all(v.dtype == np.uint8 for v in videos)
    assert set(pipe.timings) == {"text", "sampling", "decoding"}


def test_same_seed_same_video_other_seed_other_video(pipe):
    options = {"width": 32, "height": 32, "frames": 5, **FAST}
    a = pipe.generate("a blue square falling", seed=7, **options)[0]
    b = pipe.generate("a blue square falling", seed=7, **options)[0]
    c = pipe.generate("a blue square falling", seed=8, **options)[0]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # Prompt i of a batch draws its noise from seed + i; seeds may also be given one each.
    two = pipe.generate(["x", "y"], seed=[8, 7], **options)
    assert not np.array_equal(two[0], two[1])


def test_invalid_sizes_are_refused_before_any_work(pipe, monkeypatch):
    steps, texts = [], []
    calls, handle = _count_dit_calls(pipe)
    monkeypatch.setattr(pipe, "encode_text", lambda *a: texts.append(a))
    cases = [
        ({"width": 40, "height": 32, "frames": 5}, "width must be a multiple of 16: got 40, use 32 or 48"),
        ({"width": 32, "height": 20, "frames": 5}, "height must be a multiple of 16: got 20, use 16 or 32"),
        ({"width": 32, "height": 32, "frames": 6}, r"frames must be 1 \+ 4k: got 6, use 5 or 9"),
        ({"width": 32, "height": 8, "frames": 1}, "got 8, use 16"),
        ({"sizes": [(32, 32, 5), (32, 32, 3)]}, r"sizes\[1\]: frames .* got 3, use 1 or 5"),
    ]  # fmt: skip
    try:
        for kwargs, message in cases:
            prompts = ["a", "b"] if "sizes" in kwargs else "a"
            with pytest.raises(ValueError, match=message):
                pipe.generate(prompts, callback=steps.append, **kwargs, **FAST)
        with pytest.raises(ValueError, match="positive integer"):
            pipe.generate("a", width=32, height=32, frames=1, steps=0)
        with pytest.raises(ValueError, match="unknown sampler"):
            pipe.generate("a", width=32, height=32, frames=1, sampler="dpm")
        with pytest.raises(ValueError, match="2 seeds for 1 prompts"):
            pipe.generate("a", width=32, height=32, frames=1, seed=[1, 2])
        with pytest.raises(ValueError, match="not both|or width"):
            pipe.generate(["a"], width=32, sizes=[(32, 32, 1)])
    finally:
        handle.remove()
    assert steps == [] and texts == [] and calls == []


def test_guidance_runs_one_doubled_call_per_step_and_a_negative_prompt_steers(random_pipe):
    pipe = random_pipe
    options = {"width": 32, "height": 32, "frames": 5, "steps": 3, "progress": False}
    calls, handle = _count_dit_calls(pipe)
    try:
        plain = pipe.generate("a red circle", guidance=1.0, **options)[0]
        assert calls == [1, 1, 1]  # no unconditional branch at scale 1
        calls.clear()
        guided = pipe.generate("a red circle", guidance=4.0, **options)[0]
        assert calls == [2, 2, 2]  # conditional and unconditional in one call
        negative = pipe.generate("a red circle", guidance=4.0, negative="a blue", **options)[0]
    finally:
        handle.remove()
    assert guided.shape == negative.shape == (5, 32, 32, 3)
    assert not np.array_equal(plain, guided)
    assert not np.array_equal(guided, negative)


def test_heun_calls_the_model_twice_a_step_and_the_callback_sees_every_step(random_pipe):
    pipe = random_pipe
    seen = []
    calls, handle = _count_dit_calls(pipe)
    try:
        options = {"width": 32, "height": 16, "frames": 1, "guidance": 1.0, "progress": False}
        heun = pipe.generate("a", steps=3, sampler="heun", callback=seen.append, **options)[0]
    finally:
        handle.remove()
    assert len(calls) == 5  # 2 + 2 + 1: the last step ends at t = 0 and stays an Euler step
    assert [s.index for s in seen] == [0, 1, 2]
    euler = pipe.generate("a", steps=3, **options)[0]
    assert not np.array_equal(heun, euler)


def test_each_sample_follows_the_schedule_its_token_count_shifts(random_pipe):
    pipe = random_pipe
    seen = []
    options = {"guidance": 1.0, "progress": False, "callback": seen.append}
    pipe.generate(["a", "b"], sizes=[(32, 32, 1), (64, 64, 9)], steps=4, **options)
    packed = pipe.lay_out(pipe.check_sizes([(32, 32, 1), (64, 64, 9)]), [0, 1])
    for i, length in enumerate(packed.lengths):  # 4 and 48 tokens: two different shifts
        seq, start = packed.placement[i]
        expected = timestep_schedule(4, token_shift(length))[1]
        assert seen[0].t_next[seq, start].item() == pytest.approx(expected.item())
    seen.clear()
    pipe.generate("a", width=32, height=32, frames=1, steps=4, shift=3.0, **options)
    assert seen[0].t_next[0, 0].item() == pytest.approx(timestep_schedule(4, 3.0)[1].item())


def test_given_latent_frames_stay_clean_through_sampling(random_pipe):
    pipe = random_pipe
    latent_sizes = pipe.check_sizes([(32, 32, 9)])  # latent (3, 4, 4)
    clean = torch.randn(4, *latent_sizes[0])
    packed = pipe.lay_out(latent_sizes, [0], given=[(clean, [0])])
    text, _ = pipe.encode_text(["a"])
    with torch.inference_mode():
        tokens = pipe.denoise(packed, text, guidance=1.0, steps=3)
    [latent] = unpack(packed, tokens)
    assert torch.equal(latent[:, 0], clean[:, 0])  # the given frame, bit for bit
    assert not torch.allclose(latent[:, 1:], clean[:, 1:])  # the others were generated


# ---------------------------------------------------------------------------------------------
# The command line


def test_cli_generate_writes_a_playable_mp4(run, tmp_path, capsys):
    out = tmp_path / "circle.mp4"
    argv = ["generate", "a red circle moving right", "--model", str(run), "--out", str(out),
            "--width", "48", "--height", "32", "--frames", "9", "--steps", "2",
            "--threads", "1", "--guidance", "3", "--negative", "blue"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "sampling" in printed and "decoding" in printed
    info = probe(out)
    assert (info.frames, info.width, info.height, info.codec) == (9, 48, 32, "h264")
    assert info.fps == pytest.approx(8.0)
    assert read_video(out).shape == (9, 32, 48, 3)


def test_cli_generate_writes_images_gifs_and_numbered_frames(run, tmp_path):
    common = ["--model", str(run), "--width", "32", "--height", "32", "--steps", "1"]
    assert main(["generate", "x", *common, "--frames", "1", "--out", str(tmp_path / "a.png")]) == 0
    assert probe(tmp_path / "a.png").is_image
    assert main(["generate", "x", *common, "--frames", "5", "--out", str(tmp_path / "b.gif")]) == 0
    assert probe(tmp_path / "b.gif").frames == 5
    assert main(["generate", "x", *common, "--frames", "5", "--out", str(tmp_path / "c.png")]) == 0
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [f"{i:06d}.png" for i in range(5)]


def test_cli_generate_refuses_a_bad_size_before_loading_the_model(
    run, tmp_path, capsys, monkeypatch
):
    def loaded(*args, **kwargs):
        raise AssertionError("the text encoder was loaded before the size was checked")

    monkeypatch.setattr(pipeline_module, "load_text_encoder", loaded)
    monkeypatch.setattr(pipeline_module, "DiT", loaded)
    out = tmp_path / "x.mp4"
    assert main(["generate", "x", "--model", str(run), "--width", "50", "--out", str(out)]) == 2
    assert "width must be a multiple of 16: got 50, use 48 or 64" in capsys.readouterr().err
    assert main(["generate", "x", "--model", str(run), "--frames", "8", "--out", str(out)]) == 2
    assert "use 5 or 9" in capsys.readouterr().err
    assert main(["generate", "x", "--model", str(run), "--out", str(tmp_path / "x.avi")]) == 2
    assert not out.exists()


def test_cli_generate_has_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: kinetoscope generate" in text
    for flag in ("--width", "--frames", "--guidance", "--negative", "--sampler", "--model"):
        assert flag in text
    # The command's defaults are the pipeline's (the size's, unless an input gives its own).
    args = build_parser().parse_args(["generate", "x"])
    for flag, value in zip(("width", "height", "frames"), DEFAULT_SIZE, strict=True):
        assert getattr(args, flag) is None and f"default: {value}" in " ".join(text.split())
    assert (args.steps, args.guidance) == (DEFAULT_STEPS, DEFAULT_GUIDANCE)


def test_eval_world_generates_a_suite_with_a_model_and_scores_it(run, tmp_path, capsys):
    short = [e for e in suite("standard") if e.spec.frames <= 9][:2]
    assert len(short) == 2
    specs = write_suite(tmp_path / "short.jsonl", short)
    videos = tmp_path / "videos"
    argv = ["eval", "world", "--model", str(run), "--specs", str(specs), "--videos", str(videos),
            "--steps", "1", "--worst", "1"]  # fmt: skip
    assert main(argv) == 0
    for entry in short:
        info = probe(videos / f"{entry.name}.mp4")
        spec = entry.spec
        assert (info.width, info.height, info.frames) == (spec.width, spec.height, spec.frames)
    report = json.loads((videos / "world_short.json").read_text())
    assert report["videos"] == 2 and report["missing"] == []
    assert "generating suite short" in capsys.readouterr().out


def test_cli_generate_never_replaces_an_existing_output_unless_asked(run, tmp_path, capsys):
    common = ["--model", str(run), "--width", "32", "--height", "32", "--steps", "1"]
    out = tmp_path / "mine.gif"
    out.write_bytes(b"a video the user made")
    argv = ["generate", "x", *common, "--frames", "5", "--out", str(out)]
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"a video the user made"  # untouched
    assert main([*argv, "--overwrite"]) == 0
    assert probe(out).frames == 5


def test_a_model_whose_outputs_are_not_finite_is_an_error_not_a_video(monkeypatch, capsys):
    from kinetoscope.cli import _expected

    torch.manual_seed(0)
    dit = DiT(DIT_PRESETS["tiny"])
    with torch.no_grad():  # finite weights whose products overflow float32
        for p in dit.parameters():
            p.fill_(1e30)
    pipe = Pipeline(dit, VideoVAE(VAE_PRESETS["tiny"]), TinyTextEncoder(), precision="fp32")
    with pytest.raises(FloatingPointError, match="not finite") as error:
        pipe.generate("x", width=32, height=32, frames=1, **FAST)
    message, code = _expected(error.value)
    assert code == 1 and "NaN or infinity" in message


def test_a_size_the_machine_cannot_hold_is_refused_with_one_that_fits(monkeypatch):
    torch.manual_seed(0)
    pipe = Pipeline(DiT(DIT_PRESETS["tiny"]), VideoVAE(VAE_PRESETS["tiny"]), TinyTextEncoder(),
                    precision="fp32")  # fmt: skip
    assert pipe.memory_needed((64, 64, 17)) < pipe.memory_needed((128, 64, 17))
    free = pipe.memory_needed((320, 64, 17))
    monkeypatch.setattr(pipeline_module, "available_memory", lambda device: free)
    pipe.check_sizes([(320, 64, 17)])  # fits exactly
    with pytest.raises(ValueError, match="a width of 320 fits") as error:
        pipe.generate("x", width=100000, height=64, frames=17, **FAST)
    assert "100000x64x17 video needs about" in str(error.value)
