"""The video captioner: it learns a few clips, is scored by the caption parser, and recaptions
manifests without losing anything, resuming after a kill."""

import base64
import io
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kinetoscope.captioner import Captioner, CaptionerConfig, PixelFrames, WordTokenizer
from kinetoscope.captioner.endpoint import EndpointCaptioner
from kinetoscope.captioner.model import OBJECT_CLASSES, TRACK_FRAMES, _DistinctObjects
from kinetoscope.captioner.run import GENERATED, fitted_latent, recaption
from kinetoscope.cli import main
from kinetoscope.data.dataset import ClipDataset
from kinetoscope.data.manifest import read_manifest
from kinetoscope.io import read_video, write_video
from kinetoscope.train.captioner import (
    CaptionerTrainConfig,
    _object_loss,
    _object_targets,
    _passes,
    caption_accuracy,
    train_captioner,
)
from kinetoscope.train.latents import LatentCache
from kinetoscope.vae import load_vae
from ranks import read_metrics, run_two_ranks

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory) -> Path:
    """A tiny captioner trained to overfit the six tiny-world clips (one held out)."""
    manifest, vae = tiny_world
    out = tmp_path_factory.mktemp("captioner") / "run"
    train_captioner(manifest, out, vae=vae, steps=160, batch=5, lr=3e-3, warmup=10, width=64,
                    layers=1, patch=1, holdout=1, progress=False, precision="fp32")  # fmt: skip
    return out


def test_the_tokenizer_round_trips_captions():
    text = "A small red circle starts in the top left and moves up-left. The background is navy."
    tokenizer = WordTokenizer.fit([text])
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.decode(tokenizer.encode("a purple circle")).startswith("A <unk> circle")


def test_accuracy_counts_each_attribute(tiny_world):
    manifest, _ = tiny_world
    records = read_manifest(manifest)
    truths = [json.loads(Path(r.truth).read_text()) for r in records]
    perfect = caption_accuracy([r.captions["long"] for r in records], truths)
    assert all(value == 1.0 for value in perfect.values()), perfect
    wrong = [r.captions["long"].replace(" red ", " blue ") for r in records]
    if any(" red " in r.captions["long"] for r in records):
        assert caption_accuracy(wrong, truths)["color"] < 1.0
    empty = caption_accuracy([""] * len(records), truths)
    assert empty["color"] == 0.0 and empty["count"] == 0.0


def test_accuracy_pairs_objects_whatever_order_the_caption_names_them(tiny_world):
    manifest, _ = tiny_world
    truths = [json.loads(Path(r.truth).read_text()) for r in read_manifest(manifest)]
    truth = next(t for t in truths if len(t["objects"]) > 1)
    first, second = truth["objects"][:2]
    sentence = "A {size} {color} {shape} starts in the {region}."
    swapped = " ".join(sentence.format(**o) for o in truth["objects"][::-1])
    assert caption_accuracy([swapped], [truth])["shape"] == 1.0
    # One object described, the other missed: half the shapes right, whatever the order.
    assert caption_accuracy([sentence.format(**second)], [truth])["shape"] == 0.5
    assert caption_accuracy([sentence.format(**first)], [truth])["count"] == 0.0


def test_greedy_decoding_one_word_at_a_time_matches_the_whole_decoder():
    from kinetoscope.captioner.model import _DecodeStep

    torch.manual_seed(0)
    captioner = Captioner(CaptionerConfig(vocab=WordTokenizer.fit(["a red circle moves"]).vocab,
                                          latent_channels=4, width=32, heads=2, max_tokens=12,
                                          encoder_layers=1, decoder_layers=2,
                                          canvas_features=True)).eval()  # fmt: skip
    latents = [torch.randn(4, 3, 4, 6), torch.randn(4, 2, 2, 2)]
    with torch.no_grad():
        memory, pad = captioner.encode(latents)
        words = torch.randint(1, len(captioner.config.vocab), (2, 11))  # no padding
        whole = captioner._decode(words, memory, pad)  # (B, S, V)
        step = _DecodeStep(captioner, memory, pad)
        one_by_one = torch.stack([step(words[:, k]) for k in range(11)], dim=1)
    torch.testing.assert_close(one_by_one, whole, atol=1e-5, rtol=1e-5)


def test_canvas_features_place_each_token_on_its_own_clips_canvas():
    from kinetoscope.captioner.model import canvas_features

    where = torch.tensor([[[0, 0, 0], [0, 1, 3], [0, 0, 0]], [[0, 0, 0], [1, 0, 1], [0, 0, 0]]])
    pad = torch.tensor([[False, False, True], [False, False, True]])
    features = canvas_features(where, pad)  # (B, M, 4)
    # Clip 0: a 2x4 grid, clip 1: 1x2 (the padded token is ignored).
    torch.testing.assert_close(features[0, 1], torch.tensor([0.75, 0.875, 2 / 16, 4 / 16]))
    torch.testing.assert_close(features[1, 1], torch.tensor([0.5, 0.75, 1 / 16, 2 / 16]))


def test_a_tiny_captioner_learns_its_clips(trained, tiny_world):
    manifest, vae_folder = tiny_world
    report = json.loads((trained / "report.json").read_text())
    assert report["step"] == 160 and set(report["accuracy"]) >= {"color", "motion", "region"}
    captioner = Captioner.load(trained)  # a run folder: its checkpoint's model
    vae = load_vae(vae_folder)
    from kinetoscope.captioner.run import caption_files

    records = read_manifest(manifest)[:-1]  # the training clips
    captions = [text for _, text in caption_files(captioner, [r.path for r in records], vae)]
    truths = [json.loads(Path(r.truth).read_text()) for r in records]
    accuracy = caption_accuracy(captions, truths)
    assert accuracy["color"] >= 0.8 and accuracy["background"] >= 0.8, (accuracy, captions)


def test_recaption_keeps_every_caption_and_resumes_after_a_kill(trained, tiny_world, tmp_path):
    manifest, vae_folder = tiny_world
    before = Path(manifest).read_bytes()
    captioner, vae = Captioner.load(trained), load_vae(vae_folder)
    out = tmp_path / "recaptioned.jsonl"
    real, calls = captioner.caption, []

    def dies_on_the_third(latents):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the job is killed mid-way
        return real(latents)

    captioner.caption = dies_on_the_third
    with pytest.raises(KeyboardInterrupt):
        recaption(captioner, manifest, out, vae=vae, progress=False)
    assert len(out.read_text().splitlines()) == 2
    with open(out, "a") as handle:
        handle.write('{"path": "cut off')  # a line cut by the kill
    captioner.caption = real
    counts = recaption(captioner, manifest, out, vae=vae, progress=False)
    assert counts == {"captioned": 4, "kept": 2, "skipped": 0}
    original, new = read_manifest(manifest), read_manifest(out)
    assert [r.path for r in new] == [r.path for r in original]
    for old, record in zip(original, new, strict=True):
        assert {k: v for k, v in record.captions.items() if k != GENERATED} == old.captions
        assert record.captions[GENERATED] and record.extra["generated_by"]
    assert Path(manifest).read_bytes() == before  # the input is never written


def test_cli_captions_and_refuses_to_write_over_its_input(trained, tiny_world, tmp_path, capsys):
    manifest, _ = tiny_world
    clip = read_manifest(manifest)[0].path
    # The tiny captioner was trained on the tiny VAE; the CLI reads with the bundled one, so
    # this checks the command, not the caption.
    assert main(["caption", clip, "--model", str(trained)]) == 0
    assert capsys.readouterr().out.startswith(f"{clip}: ")
    assert main(["recaption", str(manifest), "--out", str(manifest),
                 "--model", str(trained)]) == 2  # fmt: skip
    assert "is the input manifest" in capsys.readouterr().err


def test_resume_after_n_steps_equals_an_uninterrupted_run(tiny_world, tmp_path):
    manifest, vae = tiny_world
    run = {"vae": vae, "cache": tmp_path / "cache", "steps": 4, "batch": 3, "width": 32,
           "layers": 1, "holdout": 1, "warmup": 1, "precision": "fp32", "progress": False}  # fmt: skip
    whole = train_captioner(manifest, tmp_path / "whole", **run)
    assert train_captioner(manifest, tmp_path / "parts", stop_at=2, **run) == {
        "steps": 2, "stopped": True}  # fmt: skip
    resumed = train_captioner(manifest, tmp_path / "parts", resume=True, **run)
    a, b = (Captioner.load(tmp_path / name).state_dict() for name in ("whole", "parts"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["final_loss"] == whole["final_loss"] and resumed["steps"] == 4
    assert resumed["accuracy"] == whole["accuracy"]


def test_a_step_in_passes_of_similar_length_trains_as_one_pass(tiny_world, tmp_path):
    manifest, vae = tiny_world
    run = {"vae": vae, "cache": tmp_path / "cache", "steps": 2, "batch": 4, "width": 32,
           "layers": 1, "holdout": 1, "warmup": 1, "precision": "fp32", "progress": False}  # fmt: skip
    whole = train_captioner(manifest, tmp_path / "one", pass_tokens=10**6, **run)
    apart = train_captioner(manifest, tmp_path / "apart", pass_tokens=1, **run)  # a clip a pass
    a, b = (Captioner.load(tmp_path / name).state_dict() for name in ("one", "apart"))
    # (Adam divides by the gradient's size, so weights whose gradient is zero, such as the
    # attention's key biases, move by rounding noise: hence 1e-4, a tenth of one step.)
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    assert apart["final_loss"] == pytest.approx(whole["final_loss"], rel=1e-5)
    # Sorted by length, cut where the padded size would pass the budget.
    assert _passes([5, 1, 3, 9], budget=6) == [[1, 2], [0], [3]]


TWO_RANKS = """
import json, sys
from kinetoscope.train.captioner import train_captioner
manifest, out, vae, cache, run = sys.argv[1:]
train_captioner(manifest, out, vae=vae, cache=cache, progress=False, **json.loads(run))
"""


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_taking_unequal_passes_train_as_one_process(parallel, tiny_world, tmp_path):
    manifest, vae = tiny_world
    # A clip a pass: of a step's 5 clips one rank takes 3 passes and the other 2, so the
    # second repeats its last at weight 0 (FSDP gathers the weights in every pass).
    run = {"steps": 3, "batch": 5, "width": 32, "layers": 1, "holdout": 1, "warmup": 1,
           "precision": "fp32", "pass_tokens": 1, "parallel": parallel}  # fmt: skip
    train_captioner(manifest, tmp_path / "one", vae=vae, cache=tmp_path / "cache",
                    progress=False, **run)  # fmt: skip
    run_two_ranks(TWO_RANKS, tmp_path, str(manifest), str(tmp_path / "two"), str(vae),
                  str(tmp_path / "cache"), json.dumps(run))  # fmt: skip
    a, b = (Captioner.load(tmp_path / name).state_dict() for name in ("one", "two"))
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-4)


def test_init_fine_tunes_a_trained_captioner_and_refuses_one_that_lacks_the_words(
    trained, tiny_world, tmp_path
):
    manifest, vae = tiny_world
    run = {"vae": vae, "steps": 2, "batch": 3, "holdout": 1, "warmup": 1, "precision": "fp32",
           "progress": False}  # fmt: skip
    before = Captioner.load(trained)
    report = train_captioner(manifest, tmp_path / "tuned", init=trained, lr=1e-3, **run)
    after = Captioner.load(tmp_path / "tuned")
    assert after.config == before.config  # its sizes and vocabulary, not the defaults
    start, end = before.state_dict(), after.state_dict()
    assert any(not torch.equal(start[k], end[k]) for k in start)  # it trained
    assert report["steps"] == 2
    # A captioner trained on other words cannot learn these captions: a clear error.
    narrow = Captioner(CaptionerConfig(vocab=WordTokenizer.fit(["a red circle"]).vocab, width=32))
    narrow.save(tmp_path / "narrow")
    with pytest.raises(ValueError, match="does not know the words"):
        train_captioner(manifest, tmp_path / "refused", init=tmp_path / "narrow", **run)


def test_a_bf16_run_caches_the_fp32_latents_that_caption_reads(trained, tiny_world, tmp_path):
    manifest, vae = tiny_world
    train_captioner(manifest, tmp_path / "half", init=trained, vae=vae, steps=1, batch=3,
                    holdout=1, warmup=1, precision="bf16", progress=False)  # fmt: skip
    config = CaptionerTrainConfig()
    dataset = ClipDataset(manifest, max_area=config.max_area, max_frames=config.max_frames,
                          temporal_crop="start")  # fmt: skip
    cached = LatentCache(dataset, load_vae(vae), tmp_path / "half" / "cache" / "latents")
    fresh = LatentCache(dataset, load_vae(vae), tmp_path / "fresh")
    assert all(cached.has(i) for i in range(len(dataset)))  # under fp32 keys
    assert fresh.encode(0) and torch.equal(cached.load(0), fresh.load(0))


def test_init_grows_the_encoder_and_adds_object_heads_yet_captions_as_before(
    trained, tiny_world, tmp_path
):
    manifest, vae = tiny_world
    run = {"vae": vae, "steps": 1, "batch": 3, "holdout": 1, "warmup": 1, "precision": "fp32",
           "progress": False}  # fmt: skip
    train_captioner(manifest, tmp_path / "deeper", init=trained, lr=1e-9, encoder_layers=3,
                    object_loss=1.0, track_loss=1.0, **run)  # fmt: skip
    before, after = Captioner.load(trained), Captioner.load(tmp_path / "deeper")
    assert (before.config.encoder_layers, after.config.encoder_layers) == (1, 3)
    assert after.config.decoder_layers == before.config.decoder_layers
    assert after.object_heads is not None and before.object_heads is None
    assert after.track_head is not None and before.track_head is None
    latent = torch.randn(before.config.latent_channels, 3, 4, 6)
    (states, _), (grown, _) = before.encode([latent]), after.encode([latent])
    assert torch.allclose(states, grown, atol=1e-5)  # the new layers add nothing yet
    assert before.caption([latent]) == after.caption([latent])
    assert len(list(after.encoder.parameters())) == 3 * len(list(before.encoder.parameters()))
    # Heads train only with their loss: a fine-tune without it drops them.
    train_captioner(manifest, tmp_path / "headless", init=tmp_path / "deeper", lr=1e-9, **run)
    headless = Captioner.load(tmp_path / "headless")
    assert headless.object_heads is None and headless.track_head is None
    with pytest.raises(ValueError, match="cannot drop any"):
        train_captioner(manifest, tmp_path / "shallower", init=tmp_path / "deeper",
                        encoder_layers=2, **run)  # fmt: skip


def test_object_heads_learn_each_object_where_it_starts(tiny_world, tmp_path):
    manifest, vae = tiny_world
    train_captioner(manifest, tmp_path / "heads", vae=vae, steps=60, batch=5, lr=3e-3,
                    warmup=5, width=64, layers=1, patch=1, holdout=1, object_loss=1.0,
                    track_loss=1.0, progress=False, precision="fp32")  # fmt: skip
    rows = read_metrics(tmp_path / "heads")
    for loss in ("object_loss", "track_loss"):
        first, last = rows[0][loss], np.mean([r[loss] for r in rows[-5:]])
        assert last < 0.25 * first, (loss, first, last)
    # On the training clips, the colour head names each object at the token where it starts.
    model = Captioner.load(tmp_path / "heads")
    records = read_manifest(manifest)[:-1]
    right, named = 0, 0
    for record in records:
        truth = json.loads(Path(record.truth).read_text())
        latent = fitted_latent(load_vae(vae), read_video(record.path, max_frames=9), 9)
        tokens = [model.object_token(latent, *o["start"]) for o in truth["objects"]]
        at = (torch.zeros(len(tokens), dtype=torch.long), torch.tensor(tokens))
        with torch.no_grad():
            _, heads = model([latent], torch.ones(1, 1, dtype=torch.long), at)
        for o, color in zip(truth["objects"], heads["color"].argmax(-1).tolist(), strict=True):
            right += OBJECT_CLASSES["color"][color] == o["color"]
            named += 1
    assert right >= 0.8 * named, (right, named)
    with pytest.raises(ValueError, match="object_loss and track_loss must be >= 0"):
        CaptionerTrainConfig(object_loss=-1)
    with pytest.raises(ValueError, match="pass --object-loss too"):
        CaptionerTrainConfig(track_loss=1)


def test_object_targets_hold_each_objects_track_in_shorter_sides(tiny_world):
    manifest, _ = tiny_world
    dataset = ClipDataset(manifest, max_frames=9, temporal_crop="start")
    for index, record in enumerate(dataset.records):
        truth = json.loads(Path(record.truth).read_text())
        short = min(truth["canvas"]["width"], truth["canvas"]["height"])
        targets = _object_targets(dataset, index)
        assert len(targets) == len(truth["objects"])
        for (x, y, _, track), o, path in zip(targets, truth["objects"], truth["tracks"],
                                              strict=True):  # fmt: skip
            assert [x, y] == o["start"] == track[:2] and len(track) == 2 + 2 * TRACK_FRAMES
            track = track[2:]
            (x0, y0), *later = path["position"]
            known = min(len(later), TRACK_FRAMES)
            assert np.isnan(track[2 * known :]).all()  # past the clip's end
            if known:  # frame k's displacement, as a fraction of the shorter side
                dx, dy = track[2 * known - 2 : 2 * known]
                assert dx == pytest.approx((later[known - 1][0] - x0) / short)
                assert dy == pytest.approx((later[known - 1][1] - y0) / short)


def test_the_track_loss_weighs_a_miss_by_the_frames_it_took():
    # A miss of d at frame 1 is a miss of d in velocity; at frame 16 it is d / 16 a frame, so a
    # miss at the first step, which a motion word names, costs as much as 16 times it at frame 16.
    known = torch.zeros(1, 2 + 2 * TRACK_FRAMES)
    classes = torch.full((1, len(OBJECT_CLASSES)), -1)
    named = {name: torch.zeros(1, len(names)) for name, names in OBJECT_CLASSES.items()}

    def loss_of_a_miss_at(value: int) -> float:
        named["track"] = known.clone()
        named["track"][0, value] = 0.1
        return float(_object_loss(named, classes, known)[1])

    start, first, last = (loss_of_a_miss_at(v) for v in (0, 2, 2 * TRACK_FRAMES))
    assert start == pytest.approx(first) and last < first / 8 and last > 0
    unknown = known.clone()
    unknown[0, 2:] = float("nan")  # past the clip's end: not counted
    named["track"] = known.clone()
    named["track"][0, 2 * TRACK_FRAMES] = 0.1
    assert float(_object_loss(named, classes, unknown)[1]) == 0.0


@pytest.mark.parametrize("patch", [(1, 2, 2), (1, 1, 1)])
def test_the_captioner_reads_clips_of_any_size(patch):
    torch.manual_seed(0)
    captioner = Captioner(CaptionerConfig(vocab=WordTokenizer.fit(["a red circle"]).vocab,
                                          latent_channels=4, width=32, heads=2, patch=patch,
                                          encoder_layers=1, decoder_layers=1, max_tokens=8))  # fmt: skip
    latents = [torch.randn(4, 3, 4, 6), torch.randn(4, 9, 8, 8), torch.randn(4, 1, 2, 2)]
    captions = captioner.caption(latents)
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)


def test_pixel_frames_put_every_canvas_at_one_shorter_side():
    frames = PixelFrames(16, 4)
    assert frames.latent_size(9, 32, 64) == (9, 16, 32)  # the aspect ratio kept
    assert frames.latent_size(1, 200, 90) == (1, 36, 16)  # 35.6 rounded to the multiple
    video = torch.rand(2, 3, 5, 8, 24) * 2 - 1  # upsampled: a small canvas read larger
    x = frames.encode(video)
    assert x.shape == (2, 3, 5, 16, 48) and x.abs().max() <= 1
    mean, logvar = frames.moments(video)
    assert torch.equal(mean, x) and torch.isinf(logvar).all()
    with pytest.raises(ValueError, match="multiple of the patch"):
        PixelFrames(18, 4)


def test_a_captioner_of_pixels_reads_frames_in_pairs_and_pads_an_odd_last():
    torch.manual_seed(0)
    captioner = Captioner(CaptionerConfig(vocab=WordTokenizer.fit(["a red circle"]).vocab,
                                          latent_channels=3, width=32, heads=2, patch=(2, 4, 4),
                                          encoder_layers=1, decoder_layers=1, max_tokens=8,
                                          max_latent_frames=17, pixels=16))  # fmt: skip
    assert captioner.frames_read() == 17
    clip = torch.rand(3, 17, 16, 32) * 2 - 1
    assert captioner.tokens_read(clip) == 9 * 4 * 8  # frames 0-1, ..., 14-15, 16 (+ 16 again)
    memory, pad = captioner.encode([clip, clip[:, :1]])  # a video and an image
    assert memory.shape[1] == 9 * 4 * 8 and (~pad[1]).sum() == 4 * 8
    # The padded last pair holds frame 16 twice: the clip cut to 17 reads as the clip.
    padded = torch.cat([clip, clip[:, -1:]], dim=1)
    assert torch.allclose(captioner.encode([padded])[0], memory[:1], atol=1e-6)


def test_a_stem_reads_each_frame_into_one_cell_a_token():
    torch.manual_seed(0)
    config = CaptionerConfig(vocab=WordTokenizer.fit(["a red circle"]).vocab, latent_channels=3,
                             width=32, heads=2, patch=(2, 4, 4), encoder_layers=1,
                             decoder_layers=1, max_tokens=8, max_latent_frames=17, pixels=16,
                             stem=8)  # fmt: skip
    captioner = Captioner(config)
    assert [m.out_channels for m in captioner.stem if hasattr(m, "out_channels")] == [8, 16]
    clip = torch.rand(3, 5, 16, 24) * 2 - 1
    memory, _ = captioner.encode([clip])
    assert memory.shape[1] == captioner.tokens_read(clip) == 3 * 4 * 6  # frame pairs x cells
    assert captioner.patch_embed.in_features == 2 * 16  # a pair of 16-channel cells
    with pytest.raises(ValueError, match="square power-of-two patch"):
        Captioner(replace(config, patch=(2, 6, 6)))
    with pytest.raises(ValueError, match="pass --pixels as well"):
        CaptionerTrainConfig(stem=8)
    with pytest.raises(ValueError, match="must be a multiple of --patch 8"):
        CaptionerTrainConfig(pixels=60, patch=8)
    with pytest.raises(ValueError, match="--patch must be 2, 4, 8"):
        CaptionerTrainConfig(pixels=60, patch=6, stem=8)


@pytest.mark.parametrize("stem", [0, 8])
def test_a_captioner_of_pixels_learns_its_clips_without_a_vae(stem, tiny_world, tmp_path):
    manifest, _ = tiny_world
    out = tmp_path / "pixels"
    train_captioner(manifest, out, pixels=16, patch=4, stem=stem, max_frames=9, steps=120,
                    batch=5, lr=3e-3, warmup=10, width=64, layers=1, holdout=1, progress=False,
                    precision="fp32")  # fmt: skip
    captioner = Captioner.load(out)
    assert captioner.config.pixels == 16 and captioner.config.patch == (2, 4, 4)
    assert captioner.config.stem == stem
    assert captioner.meta["vae"] is None
    from kinetoscope.captioner.run import caption_files

    records = read_manifest(manifest)[:-1]
    captions = [text for _, text in caption_files(captioner, [r.path for r in records])]
    accuracy = caption_accuracy(captions, [json.loads(Path(r.truth).read_text()) for r in records])
    assert accuracy["color"] >= 0.8 and accuracy["background"] >= 0.8, (accuracy, captions)


def test_a_captioner_of_latents_starts_one_of_pixels_but_for_its_patch_embedding(
    trained, tiny_world, tmp_path
):
    manifest, vae = tiny_world
    run = {"steps": 1, "batch": 3, "holdout": 1, "warmup": 1, "precision": "fp32",
           "progress": False, "pixels": 16, "patch": 4, "max_frames": 9}  # fmt: skip
    train_captioner(manifest, tmp_path / "pixels", init=trained, lr=1e-9, **run)
    latents, pixels = Captioner.load(trained), Captioner.load(tmp_path / "pixels")
    assert pixels.config.latent_channels == 3 and pixels.config.vocab == latents.config.vocab
    assert pixels.patch_embed.weight.shape == (latents.config.width, 3 * 2 * 4 * 4)
    start, end = latents.state_dict(), pixels.state_dict()
    carried = [k for k in start if not k.startswith("patch_embed")]
    assert all(torch.allclose(start[k], end[k], atol=1e-6) for k in carried)
    with pytest.raises(ValueError, match="drop --vae"):
        train_captioner(manifest, tmp_path / "both", vae=vae, lr=1e-3, **run)
    # A captioner of pixels fine-tunes only as one of pixels of its own size.
    with pytest.raises(ValueError, match="pass --pixels 16"):
        train_captioner(manifest, tmp_path / "refused", init=tmp_path / "pixels", lr=1e-3,
                        **{**run, "pixels": 0, "patch": 2})  # fmt: skip


def test_greedy_decoding_never_names_one_object_twice():
    tokenizer = WordTokenizer.fit(["a red circle and a red square bump into the red circle"])
    distinct = _DistinctObjects(tokenizer, rows=2)
    circle = tokenizer.index["circle"]

    def write(words_per_row):
        tokens = torch.tensor([tokenizer.index[w] for w in words_per_row])
        distinct.add(tokens)

    for pair in [("a", "a"), ("red", "red"), ("circle", "square"), ("and", "and"), ("a", "the"),
                 ("red", "red")]:  # fmt: skip
        write(pair)
    # Row 0 is naming a new red object: not the red circle again. Row 1 refers back to its red
    # square ("the red"), and has named no red circle yet: anything goes.
    logits = distinct.mask(torch.zeros(2, len(tokenizer.vocab)))
    assert logits[0, circle] == -torch.inf and logits[0, tokenizer.index["square"]] == 0
    assert torch.isfinite(logits[1]).all()


def test_the_trained_captioner_keeps_its_patch(trained):
    assert Captioner.load(trained).config.patch == (1, 1, 1)
    with pytest.raises(ValueError, match="patch and pass_tokens must be at least 1"):
        CaptionerTrainConfig(patch=0)


# ---------------------------------------------------------------------------------------------
# Real footage: a vision model behind an OpenAI-compatible endpoint (conftest's `chat_server`)


def _ramp_video(path: Path, frames: int = 40) -> Path:
    """A 96x64 clip whose frame k is gray level 6k: the frames sent can be told apart."""
    video = (
        np.zeros((frames, 64, 96, 3), np.uint8)
        + 6 * np.arange(frames, dtype=np.uint8)[:, None, None, None]
    )
    return write_video(path, video, fps=8.0, crf=0)


def _sent_images(body: dict) -> list[Image.Image]:
    [message] = body["messages"]
    parts = message["content"]
    assert parts[0]["type"] == "text"
    urls = [p["image_url"]["url"] for p in parts[1:]]
    assert all(url.startswith("data:image/jpeg;base64,") for url in urls)
    return [Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) for url in urls]


def test_the_endpoint_captioner_sends_frames_spread_over_the_clip(chat_server, tmp_path):
    clip = _ramp_video(tmp_path / "ramp.mp4")
    chat_server.answer = "A gray screen slowly brightens."
    captioner = EndpointCaptioner(chat_server.url, "vision-7b", frames=4, max_side=48)
    assert captioner.caption_file(clip) == "A gray screen slowly brightens."
    path, body = chat_server.seen[0]
    assert path == "/v1/chat/completions" and body["model"] == "vision-7b"
    images = _sent_images(body)
    assert len(images) == 4 and all(max(im.size) == 48 for im in images)
    levels = [np.asarray(im.convert("L")).mean() for im in images]
    # frames 0, 10, 20, 30 of 40: evenly spread, in order
    assert levels == sorted(levels) and levels[-1] - levels[0] > 150, levels
    assert "4 frames" in body["messages"][0]["content"][0]["text"]


def test_the_endpoint_captioner_recaptions_and_the_cli_uses_it(chat_server, tmp_path, capsys):
    clip = _ramp_video(tmp_path / "ramp.mp4", frames=9)
    image = write_video(tmp_path / "still.png", np.full((1, 32, 32, 3), 200, np.uint8))
    manifest = tmp_path / "manifest.jsonl"
    sizes = {clip: (96, 64, 9, 8.0), image: (32, 32, 1, 0.0)}
    manifest.write_text("".join(json.dumps({
        "path": p.name, "width": w, "height": h, "frames": t, "fps": fps,
        "captions": {"short": "x"}}) + "\n" for p, (w, h, t, fps) in sizes.items()))  # fmt: skip
    chat_server.answer = "A described clip."
    out = tmp_path / "new.jsonl"
    assert main(["recaption", str(manifest), "--out", str(out), "--endpoint", chat_server.url,
                 "--model", "vision-7b"]) == 0  # fmt: skip
    records = read_manifest(out)
    assert [r.captions for r in records] == [{"short": "x", GENERATED: "A described clip."}] * 2
    assert records[0].extra["generated_by"] == f"vision-7b at {chat_server.url}"
    assert len(_sent_images(chat_server.seen[-1][1])) == 1  # an image is one frame
    capsys.readouterr()
    assert main(["caption", str(clip), "--endpoint", chat_server.url, "--model", "m"]) == 0
    assert capsys.readouterr().out == f"{clip}: A described clip.\n"
    assert main(["caption", str(clip), "--endpoint", chat_server.url]) == 2
    assert "--endpoint needs --model" in capsys.readouterr().err


def test_the_endpoint_captioner_says_what_went_wrong(chat_server, tmp_path):
    clip = _ramp_video(tmp_path / "ramp.mp4", frames=9)
    chat_server.answer = b'{"error": "model does not take images"}'
    with pytest.raises(ValueError, match="not a chat completion"):
        EndpointCaptioner(chat_server.url, "m").caption_file(clip)
    chat_server.answer, chat_server.delay = "late", 2.0
    start = time.monotonic()
    with pytest.raises(ValueError, match="captioning endpoint .* did not answer after 2 tries"):
        EndpointCaptioner(chat_server.url, "m", timeout=0.3, retries=1).caption_file(clip)
    assert time.monotonic() - start < 5
    down = chat_server.down_url()
    with pytest.raises(ValueError, match="check that the server runs"):
        EndpointCaptioner(down, "m", timeout=1, retries=0).caption_file(clip)
    with pytest.raises(ValueError, match="must start with http"):
        EndpointCaptioner("localhost:8000/v1", "m")
