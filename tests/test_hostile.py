"""Hostile input and user mistakes, across every command: each case ends with a non-zero exit
(where the command cannot do its job), no traceback, a message naming the offending file,
option or line, and nothing the user had changed or lost."""

import codecs
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from kinetoscope.checkpoint import load_weights, save_model
from kinetoscope.cli import main
from kinetoscope.data.manifest import read_manifest
from kinetoscope.io import write_video
from kinetoscope.train.dit import load_dit, train_dit
from kinetoscope.train.run import Diverged
from kinetoscope.vae import VAE_PRESETS, VideoVAE

pytestmark = [
    pytest.mark.filterwarnings("ignore:prompts longer than"),
    pytest.mark.usefixtures("one_thread"),
]

FAST = {"preset": "tiny", "max_frames": 9, "lr": 3e-3, "warmup": 5, "preview_every": 0}
TRAIN_ARGS = ["--preset", "tiny", "--max-frames", "9", "--text-encoder", "tiny",
              "--preview-every", "0", "--threads", "1", "--precision", "fp32"]  # fmt: skip
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (or the file itself) with its bytes."""
    folder = Path(folder)
    if folder.is_file():
        return {folder.name: folder.read_bytes()}
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def fails(capsys, argv: list[str], *names, code: int | None = None) -> str:
    """Run the command; assert a non-zero exit, no traceback and every one of `names` in the
    message; return the message."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as error:  # argparse's own refusals
        rc = error.code
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert rc not in (0, None), text
    if code is not None:
        assert rc == code, text
    assert "Traceback" not in text, text
    for name in names:
        assert str(name) in text, (name, text)
    return text


@pytest.fixture(scope="session")
def tiny_run(tiny_world, tmp_path_factory) -> Path:
    """A 2-step DiT run folder (checkpoint, EMA, vae/) to generate from and to resume."""
    manifest, vae = tiny_world
    out = tmp_path_factory.mktemp("hostile") / "run"
    torch.set_num_threads(1)
    train_dit(manifest, out, vae=vae, steps=2, checkpoint_every=2, progress=False,
              precision="fp32", text_encoder="tiny", **FAST)  # fmt: skip
    return out


def _copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to, symlinks=True)
    return to


def _train(manifest, out, vae, *extra) -> list:
    return ["train", "--data", manifest, "--out", out, "--vae", vae, "--steps", "2", *TRAIN_ARGS,
            *extra]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Corrupt weight files: every loader names the file and says what is wrong


def _corrupt(kind: str, path: Path) -> None:
    good = path.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "pickled":
        path.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))
    elif kind == "huge header":
        path.write_bytes(struct.pack("<Q", 10**15) + b'{"a": 1}')
    elif kind == "nan":
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(path))
        name = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
        tensors[name] = torch.full_like(tensors[name], float("nan"))
        save_file(tensors, str(path))


CORRUPTIONS = {
    "empty": "it is empty",
    "truncated": "truncated",
    "pickled": "pickle",
    "huge header": "header claims",
    "nan": "NaN",
}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_generate_names_a_corrupt_model_file(kind, tiny_run, tmp_path, capsys):
    run = _copy(tiny_run, tmp_path / "run")
    weights = run / "checkpoint" / "ema" / "model.safetensors"
    _corrupt(kind, weights)
    before = snapshot(run)
    out = tmp_path / "video.mp4"
    fails(capsys, ["generate", "a ball", "--model", run, "--width", "32", "--height", "32",
                   "--frames", "5", "--steps", "1", "--out", out, "--threads", "1"],
          weights, CORRUPTIONS[kind])  # fmt: skip
    assert snapshot(run) == before and not out.exists()


@pytest.mark.parametrize("kind", ["empty", "pickled", "nan"])
def test_train_and_eval_name_a_corrupt_vae_file(kind, tiny_world, tmp_path, capsys):
    manifest, vae = tiny_world
    bad = _copy(vae, tmp_path / "vae")
    _corrupt(kind, bad / "model.safetensors")
    before = snapshot(bad)
    weights = bad / "model.safetensors"
    fails(capsys, _train(manifest, tmp_path / "run", bad), weights, CORRUPTIONS[kind])
    fails(capsys, ["eval", "vae", "--vae", bad, "--data", manifest, "--limit", "1"], weights,
          CORRUPTIONS[kind])  # fmt: skip
    assert snapshot(bad) == before


def test_nan_weights_are_never_saved(tmp_path):
    vae = VideoVAE(VAE_PRESETS["tiny"])
    with torch.no_grad():
        next(vae.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        save_model(tmp_path / "vae", vae, vae.config)
    assert not (tmp_path / "vae").exists()
    with pytest.raises(ValueError, match="model.safetensors"):
        load_weights(tmp_path / "missing", vae)


# ---------------------------------------------------------------------------------------------
# train: runs are never lost, resumes must match, options are checked first


def test_train_refuses_an_existing_run_unless_told(tiny_run, tiny_world, tmp_path, capsys):
    manifest, vae = tiny_world
    run = _copy(tiny_run, tmp_path / "run")
    before = snapshot(run)
    fails(capsys, _train(manifest, run, vae), run, "--resume", "--overwrite", code=2)
    assert snapshot(run) == before
    fails(capsys, _train(manifest, run, vae, "--resume", "--overwrite"), "pick one")
    assert snapshot(run) == before
    # --overwrite replaces it: 1 step now, where the old run had 2.
    assert main([str(a) for a in _train(manifest, run, vae, "--overwrite", "--steps", "1")]) == 0
    state = json.loads((run / "checkpoint" / "train_state" / "state.json").read_text())
    assert state["step"] == 1 and len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_train_vae_refuses_an_existing_run_unless_told(tiny_world, tmp_path, capsys):
    manifest, _ = tiny_world
    out = tmp_path / "vae-run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"precious")
    before = snapshot(out)
    fails(capsys, ["train-vae", "--data", manifest, "--out", out, "--steps", "1"], out,
          "--overwrite", code=2)  # fmt: skip
    assert snapshot(out) == before


def test_resume_refuses_another_vae(tiny_run, tiny_world, tmp_path, capsys):
    manifest, _ = tiny_world
    run = _copy(tiny_run, tmp_path / "run")
    other = tmp_path / "other-vae"
    torch.manual_seed(1)
    model = VideoVAE(VAE_PRESETS["tiny"])
    save_model(other, model, model.config)
    before = snapshot(run)
    fails(capsys, _train(manifest, run, other, "--resume"), "--vae", other, "different")
    assert snapshot(run) == before


def test_resume_refuses_another_manifest(tiny_run, tiny_world, tmp_path, capsys):
    manifest, vae = tiny_world
    run = _copy(tiny_run, tmp_path / "run")
    lines = Path(manifest).read_text().splitlines()
    shorter = Path(manifest).parent / "shorter.jsonl"
    shorter.write_text("\n".join(lines[:-1]) + "\n")
    before = snapshot(run)
    fails(capsys, _train(shorter, run, vae, "--resume"), "--data", shorter)
    assert snapshot(run) == before


def test_the_run_vae_folder_is_always_the_vae_it_trains_on(tiny_run, tiny_world, tmp_path):
    manifest, _ = tiny_world
    run = _copy(tiny_run, tmp_path / "run")
    other = tmp_path / "other-vae"
    torch.manual_seed(2)
    model = VideoVAE(VAE_PRESETS["tiny"])
    save_model(other, model, model.config)
    # Replacing the run with another VAE replaces its vae/ too (it was left stale before).
    train_dit(manifest, run, vae=other, steps=1, overwrite=True, progress=False, **FAST)
    saved = load_weights(run / "vae", VideoVAE(VAE_PRESETS["tiny"]))
    assert saved == {}
    a, b = VideoVAE(VAE_PRESETS["tiny"]), VideoVAE(VAE_PRESETS["tiny"])
    load_weights(run / "vae", a)
    load_weights(other, b)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                   b.state_dict().values(), strict=True))  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        (["--threads", "-1"], ["--threads", "-1"]),
        (["--threads", "0"], ["--threads"]),
        (["--device", "tpu"], ["unknown device", "tpu"]),
        (["--device", "mps"], ["cpu or cuda", "mps"]),
        (["--lr", "inf"], ["lr", "inf"]),
        (["--lr", "nan"], ["lr", "nan"]),
        (["--max-frames", "6"], ["max_frames", "1 + 4k"]),
        (["--caption-dropout", "2"], ["caption_dropout"]),
        (["--preset", "huge"], ["huge"]),
    ],
)
def test_train_refuses_bad_options_before_any_work(extra, names, tiny_world, tmp_path, capsys):
    manifest, vae = tiny_world
    text = fails(capsys, _train(manifest, tmp_path / "run", vae, *extra), *names)
    assert str(manifest.parent) not in text  # an option error is not blamed on a clip
    assert not (tmp_path / "run" / "checkpoint").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_train_and_generate_refuse_cuda_without_a_gpu(tiny_run, tiny_world, tmp_path, capsys):
    manifest, vae = tiny_world
    fails(capsys, _train(manifest, tmp_path / "run", vae, "--device", "cuda"), "no CUDA GPU")
    fails(capsys, ["generate", "x", "--model", tiny_run, "--device", "cuda", "--out",
                   tmp_path / "v.mp4"], "no CUDA GPU")  # fmt: skip


def test_train_refuses_impossible_outputs(tiny_world, tmp_path, capsys):
    manifest, vae = tiny_world
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    fails(capsys, _train(manifest, a_file, vae), a_file, "is a file")
    fails(capsys, _train(manifest, a_file / "run", vae), a_file, "cannot be created")
    fails(capsys, _train(manifest, tmp_path / ("x" * 300), vae), "longer than 255")
    assert a_file.read_text() == "keep me"


@pytest.mark.skipif(ROOT, reason="root writes into read-only folders")
def test_train_refuses_a_read_only_folder(tiny_world, tmp_path, capsys):
    manifest, vae = tiny_world
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        fails(capsys, _train(manifest, locked / "run", vae), locked, "not writable")
    finally:
        locked.chmod(0o755)


# ---------------------------------------------------------------------------------------------
# Saved configs: a hand-edited value is named with its file and field on --resume


def _edit_json(path: Path, change: dict | str, key: str | None = None) -> None:
    """Apply `change` to the JSON object in `path` (under `key` if given); a string replaces
    the whole file."""
    if isinstance(change, str):
        path.write_text(change)
        return
    document = json.loads(path.read_text())
    (document[key] if key else document).update(change)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"depth": "2"}, ["'depth'", "a whole number", '"2"']),
        ({"patch": [1, 2]}, ["'patch'", "a list of 3 whole numbers"]),
        ({"mlp": "relu"}, ["'mlp'", '"relu"']),
        ({"num_heads": 5}, ["num_heads 5"]),
        ({"mlp_ratio": float("nan")}, ["'mlp_ratio'", "NaN"]),
    ],
)
def test_resume_names_a_bad_value_in_the_saved_model_config(
    change, names, tiny_run, tiny_world, tmp_path, capsys
):
    manifest, vae = tiny_world
    run = _copy(tiny_run, tmp_path / "run")
    config = run / "checkpoint" / "model" / "config.json"
    _edit_json(config, change, "config")
    before = snapshot(run)
    fails(capsys, _train(manifest, run, vae, "--resume"), config, *names)
    assert snapshot(run) == before


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"threads": -1}, ["threads", "-1"]),
        ({"device": "tpu"}, ["'config.device'", '"tpu"']),
        ({"device": 0}, ["'config.device'", "0"]),
        ({"max_area": "65536"}, ["'config.max_area'", '"65536"']),
        ({"betas": [0.9]}, ["'config.betas'", "a list of 2 finite numbers"]),
        ({"precision": "fp8"}, ["precision", "fp8"]),
    ],
)
def test_a_saved_dit_train_config_is_checked_on_resume(
    change, names, tiny_run, tiny_world, tmp_path, capsys
):
    from kinetoscope.train.dit import DiTTrainConfig
    from kinetoscope.train.run import read_run_state

    saved = tiny_run / "checkpoint" / "train_state" / "state.json"
    assert read_run_state(saved, DiTTrainConfig)["step"] == 2  # as saved, it reads
    run = _copy(tiny_run, tmp_path / "run")
    state = run / "checkpoint" / "train_state" / "state.json"
    _edit_json(state, change, "config")
    before = snapshot(run)
    manifest, vae = tiny_world
    fails(capsys, _train(manifest, run, vae, "--resume"), state, *names)
    assert snapshot(run) == before


# ---------------------------------------------------------------------------------------------
# Manifests: every bad value names the file, the line and the field, in any encoding


def _manifest_with(tmp_path: Path, tiny_world, line: str, encoding: str = "utf-8") -> Path:
    good = Path(tiny_world[0]).read_text().splitlines()[0]
    path = Path(tiny_world[0]).parent / f"bad-{abs(hash((line, encoding)))}.jsonl"
    path.write_bytes((good + "\n" + line + "\n").encode(encoding))
    return path


def _record(**changes) -> str:
    record = {"path": "clips/000000.mkv", "width": 32, "height": 32, "frames": 5, "fps": 8.0}
    return json.dumps({**record, **changes}, ensure_ascii=False)


@pytest.mark.parametrize(
    ("line", "names"),
    [
        (_record(width=None), ["width", "null"]),
        (_record(fps=[8]), ["fps", "[8]"]),
        (_record(path=7), ["'path'", "7"]),
        (_record(frames=-3), ["frames", "-3"]),
        (_record(frames=2.5), ["frames", "2.5"]),
        (_record(captions="a ball"), ["captions"]),
        ("12", ["JSON object", "12"]),
        ('{"path": "a.mkv", "width": 32', ["not valid JSON"]),
        (json.dumps({"path": "a.mkv"}), ["missing field", "width"]),
        (
            _record(captions={"original": "a red\u001b[31m ball"}),
            ["'captions'", "U+001B", "column 6"],
        ),
        (_record(captions={"long": "one\ntwo\u0007"}), ['"long"', "U+0007", "line 2, column 4"]),
        (_record(captions={"bell\u0007": "a ball"}), ["'captions'", "U+0007"]),
    ],
)
def test_a_malformed_manifest_names_file_line_and_field(line, names, tiny_world, tmp_path, capsys):
    manifest = _manifest_with(tmp_path, tiny_world, line)
    fails(capsys, ["train-vae", "--data", manifest, "--out", tmp_path / "v", "--steps", "1"],
          f"{manifest}:2", *names)  # fmt: skip
    with pytest.raises(ValueError, match=":2: "):
        read_manifest(manifest)


def test_utf16_and_latin1_manifests(tiny_world, tmp_path, capsys):
    utf16 = _manifest_with(tmp_path, tiny_world, _record(width="wide"), "utf-16")
    assert utf16.read_bytes().startswith(codecs.BOM_UTF16_LE)
    fails(capsys, ["train", "--data", utf16, "--out", tmp_path / "r", "--vae", tiny_world[1]],
          f"{utf16}:2", "'width'", '"wide"')  # fmt: skip
    latin1 = _manifest_with(tmp_path, tiny_world, _record(captions={"original": "café"}), "latin-1")
    fails(capsys, ["train", "--data", latin1, "--out", tmp_path / "r", "--vae", tiny_world[1]],
          f"{latin1}:2", "not UTF-8")  # fmt: skip
    # A UTF-16 manifest with good values reads like the UTF-8 one.
    good = Path(tiny_world[0]).read_text(encoding="utf-8")
    converted = tmp_path / "utf16.jsonl"
    converted.write_text(good, encoding="utf-16")
    assert len(read_manifest(converted)) == len(read_manifest(tiny_world[0]))


def test_missing_and_folder_manifests(tiny_world, tmp_path, capsys):
    fails(capsys, ["train", "--data", tmp_path / "nope.jsonl", "--out", tmp_path / "r", "--vae",
                   tiny_world[1]], "nope.jsonl", "does not exist")  # fmt: skip
    fails(capsys, ["train-vae", "--data", tmp_path, "--out", tmp_path / "r", "--steps", "1"],
          tmp_path, "is a folder")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# generate: outputs checked before any work


def _generate(model, out, *extra) -> list:
    return ["generate", "a ball", "--model", model, "--width", "32", "--height", "32",
            "--frames", "5", "--steps", "1", "--out", out, "--threads", "1", *extra]  # fmt: skip


def test_generate_refuses_outputs_it_cannot_write(tiny_run, tmp_path, capsys):
    folder = tmp_path / "exists.mp4"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    fails(capsys, _generate(tiny_run, folder), folder, "existing folder")
    assert (folder / "keep.txt").read_text() == "keep"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    fails(capsys, _generate(tiny_run, a_file / "v.mp4"), a_file, "cannot be created")
    fails(capsys, _generate(tiny_run, tmp_path / "v.avi"), "--out", "v.avi")
    fails(capsys, _generate(tiny_run, tmp_path / "v.mp4", "--threads", "-1"), "--threads")
    fails(capsys, _generate(tiny_run, tmp_path / "v.mp4", "--device", "gpu9"), "gpu9")
    fails(capsys, _generate(tmp_path / "no-model", tmp_path / "v.mp4"), "no-model")
    fails(capsys, _generate(tiny_run, tmp_path / "v.mp4", "--width", "33"), "33")
    assert not (tmp_path / "v.mp4").exists()


def test_generate_works_and_debug_shows_the_traceback(tiny_run, tmp_path, capsys):
    assert main([str(a) for a in _generate(tiny_run, tmp_path / "v.mp4")]) == 0
    assert (tmp_path / "v.mp4").stat().st_size > 0
    with pytest.raises(ValueError, match="v.avi"):
        main([str(a) for a in _generate(tiny_run, tmp_path / "v.avi", "--debug")])


# ---------------------------------------------------------------------------------------------
# index: never writes over its inputs; one odd entry never sinks the rest


@pytest.fixture
def media_folder(tiny_world, tmp_path) -> Path:
    folder = tmp_path / "media"
    folder.mkdir()
    clips = sorted((Path(tiny_world[0]).parent / "clips").iterdir())
    shutil.copy(clips[0], folder / "a.mkv")
    shutil.copy(clips[1], folder / "b.mkv")
    (folder / "a.txt").write_text("a red ball")
    return folder


def test_index_refuses_to_write_over_its_inputs(media_folder, tmp_path, capsys):
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"path": "b.mkv", "caption": "a blue box"}) + "\n")
    before = snapshot(media_folder) | snapshot(captions)
    out = tmp_path / "m.jsonl"
    index = ["index", media_folder, "--captions", captions]
    fails(capsys, [*index, "--out", captions], "--out", captions, "captions file")
    fails(capsys, [*index, "--out", out, "--errors", captions], "--errors", "captions file")
    fails(capsys, [*index, "--out", out, "--errors", out], "--errors", "same file")
    fails(capsys, [*index, "--out", media_folder / "a.mkv"], "a.mkv", "being indexed")
    fails(capsys, [*index, "--out", out, "--errors", media_folder / "a.txt"], "a.txt")
    fails(capsys, [*index, "--out", media_folder], media_folder, "existing folder")
    fails(capsys, ["index", media_folder, "--out", out, "--workers", "-2"], "--workers")
    assert snapshot(media_folder) | snapshot(captions) == before
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "content", "names"),
    [
        ("c.jsonl", json.dumps({"path": 5, "caption": "x"}) + "\n", [":1", "'path'", "5"]),
        ("c.jsonl", json.dumps({"path": "a.mkv", "caption": ["x"]}) + "\n", [":1", "'caption'"]),
        ("c.jsonl", "[1, 2]\n", [":1", "path"]),
        ("c.csv", "file,text\na.mkv,x\n", [":1", "path,caption"]),
        (
            "c.jsonl",
            json.dumps({"path": "a.mkv", "caption": "bell\u0007"}) + "\n",
            [":1", "'caption'", "control character U+0007", "column 5"],
        ),
        ("c.csv", 'path,caption\na.mkv,"clear\x1b[2J"\n', [":2", "'caption'", "U+001B"]),
        ("c.csv", 'path,caption\na.mkv,"over\rwrite"\n', [":2", "'caption'", "U+000D"]),
        ("c.csv", "path,caption\na.mkv,over\rwrite\n", [":2", "not valid CSV", "double quotes"]),
        ("c.csv", "path,caption\na.mkv," + "x" * 200_000 + "\n", [":2", "field limit"]),
    ],
)
def test_index_names_the_line_of_a_bad_captions_file(
    name, content, names, media_folder, tmp_path, capsys
):
    captions = tmp_path / name
    captions.write_text(content)
    fails(capsys, ["index", media_folder, "--out", tmp_path / "m.jsonl", "--captions", captions],
          captions, *names)  # fmt: skip


def test_index_reads_a_latin1_captions_csv_as_an_error_naming_the_line(
    media_folder, tmp_path, capsys
):
    captions = tmp_path / "c.csv"
    captions.write_bytes("path,caption\na.mkv,un caf\xe9\n".encode("latin-1"))
    fails(capsys, ["index", media_folder, "--out", tmp_path / "m.jsonl", "--captions", captions],
          f"{captions}:2", "not UTF-8")  # fmt: skip


def test_index_reports_odd_entries_and_indexes_the_rest(media_folder, tmp_path, capsys):
    (media_folder / "loop.mkv").symlink_to(media_folder / "loop.mkv")  # a symlink loop
    os.symlink(b"nowhere", os.fsencode(media_folder / "b.txt"))  # a sidecar that cannot be read
    weird = os.fsencode(media_folder) + b"/caf\xe9.mkv"  # a name that is not UTF-8
    shutil.copy(media_folder / "a.mkv", weird)
    (media_folder / "c.mkv").write_bytes((media_folder / "a.mkv").read_bytes())
    (media_folder / "c.txt").write_text("tab\tok on line 1\nbut a bell\u0007 on line 2")
    out = tmp_path / "m.jsonl"
    assert main(["index", str(media_folder), "--out", str(out)]) == 0
    text = capsys.readouterr()
    assert "Traceback" not in text.out + text.err
    records = {Path(r.path).name: r for r in read_manifest(out)}
    assert sorted(records) == ["a.mkv", "b.mkv", "c.mkv"]
    assert records["a.mkv"].captions == {"original": "a red ball"}
    assert records["b.mkv"].captions == {} and records["c.mkv"].captions == {}
    errors = [json.loads(line) for line in out.with_name("m.errors.jsonl").read_text().splitlines()]
    reasons = {Path(e["path"]).name: e["reason"] for e in errors}
    assert "loop.mkv" in reasons
    assert "not valid UTF-8" in reasons["caf\\udce9.mkv"]
    assert "cannot be read" in reasons["b.txt"]
    assert "control character U+0007 at line 2, column 11" in reasons["c.txt"]
    assert not list(tmp_path.glob("*.tmp"))


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims `width` x `height` pixels (its pixel data is never reached)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))  # fmt: skip
    return path


def _truncated_mp4(path: Path, frames: int = 33) -> Path:
    """An mp4 cut in half: its header still claims `frames` frames."""
    video = np.random.default_rng(0).integers(0, 256, (frames, 64, 64, 3), dtype=np.uint8)
    write_video(path, video, fps=8)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_index_leaves_out_what_training_cannot_read(media_folder, tmp_path, capsys):
    _truncated_mp4(media_folder / "cut.mp4")
    _png_claiming(media_folder / "huge.png", 12_000, 9_000)  # 108 M pixels
    before = snapshot(media_folder)
    out = tmp_path / "m.jsonl"
    assert main(["index", str(media_folder), "--out", str(out)]) == 0  # the rest is indexed
    text = capsys.readouterr()
    assert "Traceback" not in text.out + text.err
    assert "2 unreadable" in text.out and "m.errors.jsonl" in text.out
    assert sorted(Path(r.path).name for r in read_manifest(out)) == ["a.mkv", "b.mkv"]
    errors = [json.loads(line) for line in out.with_name("m.errors.jsonl").read_text().splitlines()]
    reasons = {Path(e["path"]).name: e["reason"] for e in errors}
    assert "header claims 33 frames" in reasons["cut.mp4"] and "truncated" in reasons["cut.mp4"]
    assert "12000x9000" in reasons["huge.png"] and "pixels" in reasons["huge.png"]
    assert snapshot(media_folder) == before


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_training_reads_skip_what_index_leaves_out(tmp_path, caplog):
    # A manifest made some other way still names them: training skips them with the reason.
    from kinetoscope.data.dataset import ClipDataset
    from kinetoscope.data.manifest import ManifestRecord
    from kinetoscope.io import VideoReadError, read_video

    huge = _png_claiming(tmp_path / "huge.png", 12_000, 9_000)
    with pytest.raises(VideoReadError, match="huge.png.*12000x9000"):
        read_video(huge)
    cut = _truncated_mp4(tmp_path / "cut.mp4")
    records = [ManifestRecord(str(huge), 12_000, 9_000, 1, 0.0),
               ManifestRecord(str(cut), 64, 64, 33, 8.0)]  # fmt: skip
    dataset = ClipDataset(records, max_frames=33, temporal_crop="start")
    assert [dataset[i] for i in range(2)] == [None, None] and dataset.skipped == 2
    assert "huge.png" in caplog.text and "cut.mp4" in caplog.text


@pytest.mark.skipif(ROOT, reason="root reads unreadable folders")
def test_index_reports_an_unreadable_subfolder(media_folder, tmp_path):
    hidden = media_folder / "locked"
    hidden.mkdir()
    shutil.copy(media_folder / "a.mkv", hidden / "d.mkv")
    hidden.chmod(0)
    try:
        from kinetoscope.data.index import index_folder

        report = index_folder(media_folder, tmp_path / "m.jsonl", progress=False)
    finally:
        hidden.chmod(0o755)
    assert report.indexed == 2 and report.failed == 1
    assert "locked" in report.errors.read_text()


# ---------------------------------------------------------------------------------------------
# eval and world: outputs checked first


def test_eval_and_world_refuse_outputs_they_cannot_write(tiny_world, tmp_path, capsys):
    manifest, vae = tiny_world
    a_file = tmp_path / "report"
    a_file.write_text("keep")
    fails(capsys, ["eval", "vae", "--vae", vae, "--data", manifest, "--out", a_file], a_file,
          "is a file")  # fmt: skip
    fails(capsys, ["world", "--out", a_file, "--clips", "1"], a_file, "is a file")
    fails(capsys, ["world", "--out", tmp_path / "w", "--workers", "-1"], "--workers")
    fails(capsys, ["eval", "world", "--export-suite", tmp_path], "--export-suite", "folder")
    fails(capsys, ["eval", "world", "--render-reference", a_file], a_file, "is a file")
    assert a_file.read_text() == "keep"


def test_eval_counts_a_file_named_twice_once(tiny_world, tmp_path, capsys):
    manifest, vae = tiny_world
    lines = Path(manifest).read_text().splitlines()
    first = json.loads(lines[0])
    respelled = json.dumps({**first, "path": "./" + first["path"]})  # the same file again
    twice = Path(manifest).parent / "twice.jsonl"
    twice.write_text("\n".join([lines[0], lines[1], lines[0], respelled, lines[2]]) + "\n")
    once = Path(manifest).parent / "once.jsonl"
    once.write_text("\n".join(lines[:3]) + "\n")
    before = snapshot(twice)
    reports = {}
    for name in (twice, once):
        out = tmp_path / name.stem
        assert main(["eval", "vae", "--vae", str(vae), "--data", str(name), "--out", str(out)]) == 0
        reports[name.stem] = json.loads((out / "report.json").read_text())
    text = capsys.readouterr().err
    assert "Traceback" not in text
    assert str(twice) in text and "line 3 (= line 1), line 4 (= line 1)" in text
    assert str(once) not in text  # no warning without duplicates
    assert reports["twice"]["clips"] == 3
    assert reports["twice"]["psnr"] == reports["once"]["psnr"]
    assert reports["twice"]["per_clip"] == reports["once"]["per_clip"]
    assert snapshot(twice) == before


# ---------------------------------------------------------------------------------------------
# Interrupted and diverged runs


def test_sigint_saves_a_checkpoint_and_resuming_equals_an_uninterrupted_run(tiny_world, tmp_path):
    manifest, vae = tiny_world
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "kinetoscope", "train", "--data", str(manifest), "--out",
            str(out), "--vae", str(vae), "--steps", "100000", "--lr", "3e-3", "--warmup", "5",
            "--checkpoint-every", "100000", *TRAIN_ARGS]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    err = err.decode()
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "stopped by SIGINT" in err and "--resume" in err
    state = json.loads((out / "checkpoint" / "train_state" / "state.json").read_text())
    stopped = state["step"]
    assert stopped >= 3
    # Resume to a few steps past the stop; an uninterrupted run of that length must match.
    steps = stopped + 3
    run = {**FAST, "precision": "fp32", "checkpoint_every": 100000, "text_encoder": "tiny"}
    resumed = train_dit(manifest, out, vae=vae, steps=steps, resume=True, progress=False, **run)
    whole = train_dit(manifest, tmp_path / "whole", vae=vae, steps=steps, progress=False, **run)
    assert resumed["weights_sha256"] == whole["weights_sha256"]
    for part in ("ema", "model"):
        a = load_dit(out / "checkpoint" / part).state_dict()
        b = load_dit(tmp_path / "whole" / "checkpoint" / part).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    drop = ("seconds", "tokens_per_s")
    rows = [[{k: v for k, v in json.loads(line).items() if k not in drop}
             for line in (folder / "metrics.jsonl").read_text().splitlines()]
            for folder in (out, tmp_path / "whole")]  # fmt: skip
    assert rows[0] == rows[1] and len(rows[0]) == steps


def test_a_diverging_run_exits_non_zero_and_keeps_its_last_good_checkpoint(
    tiny_world, tmp_path, capsys
):
    manifest, vae = tiny_world
    out = tmp_path / "run"
    run = {**FAST, "precision": "fp32", "checkpoint_every": 3, "text_encoder": "tiny"}
    train_dit(manifest, out, vae=vae, steps=3, progress=False, **run)
    good = snapshot(out / "checkpoint")
    # An absurd rate blows the weights up; the run stops instead of saving NaN.
    argv = [
        "train",
        "--data",
        manifest,
        "--out",
        out,
        "--vae",
        vae,
        "--steps",
        "40",
        "--resume",
        "--lr",
        "1e30",
        "--warmup",
        "5",
        "--checkpoint-every",
        "3",
        *TRAIN_ARGS,
    ]
    text = fails(capsys, argv, "diverged", "step 3", code=3)  # fmt: skip
    assert "non-finite" in text or "NaN" in text
    assert snapshot(out / "checkpoint") == good
    for part in ("model", "ema"):
        model = load_dit(out / "checkpoint" / part)
        assert all(torch.isfinite(p).all() for p in model.parameters())
    # The Python API raises Diverged, with the limit in the config.
    with pytest.raises(Diverged, match="2 non-finite steps in a row"):
        train_dit(manifest, out, vae=vae, steps=40, resume=True, progress=False,
                  **{**run, "lr": 1e38, "max_nonfinite_steps": 2})  # fmt: skip
    assert snapshot(out / "checkpoint") == good


# ---------------------------------------------------------------------------------------------
# The Python API: misuse is a ValueError that says what to pass, never a TypeError


@pytest.mark.parametrize(
    ("prompts", "options", "message"),
    [
        (None, {}, "prompts must be a string"),
        (5, {}, "prompts must be a string"),
        ("x", {"seed": 1.5}, "seed"),
        ("x", {"seed": "12"}, "seed"),
        ("x", {"seed": 2**70}, "2\\*\\*64"),
        ("x", {"guidance": "4"}, "guidance"),
        ("x", {"steps": "3"}, "steps"),
        ("x", {"sampler": None}, "sampler"),
    ],
)
def test_generate_api_misuse_is_a_value_error(prompts, options, message, tiny_run):
    from kinetoscope.pipeline import Pipeline

    pipe = Pipeline.load(tiny_run, device="cpu")
    with pytest.raises(ValueError, match=message):
        pipe.generate(prompts, width=32, height=32, frames=5, progress=False,
                      **{"steps": 1, **options})  # fmt: skip
