"""The captioner on world clips it never saw: accuracy per attribute, and clips/s.

Two sets of fresh clips, drawn with `--seed` (not the training data's):

- default: N clips of the default mix (every size up to 256 px and 65 frames, 1-3 objects),
  the benchmark's held-out (color, shape, motion) combinations excluded, as in training;
- heldout: N clips each showing at least one of those held-out combinations.

Each clip is written as a lossless video and captioned as `kinetoscope caption` does it (read
the file, fit it to the grid, encode it with the captioner's VAE or, for a captioner of pixels,
resize it, decode greedily, naming no object twice); the captions are parsed back and scored
against the clip's ground truth (`caption_accuracy`). The clips/s are those of that whole path,
one file at a time.

    python benchmarks/bench_captioner.py --model RUN [--clips 500] [--seed 9001] [--record]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from kinetoscope.captioner import Captioner
from kinetoscope.captioner.run import caption_files
from kinetoscope.data.world import DEFAULT_HELDOUT, WorldConfig, clip_from_scene, sample_scene
from kinetoscope.data.world.generate import clip_seed, make_clip
from kinetoscope.io import write_video
from kinetoscope.train.captioner import ATTRIBUTES, caption_accuracy
from record import markdown_table, record


def default_clips(count: int, seed: int) -> list:
    """`count` clips of the default mix, the held-out combinations excluded."""
    return [make_clip(clip_seed(seed, i)) for i in range(count)]


def heldout_clips(count: int, seed: int) -> list:
    """`count` clips of the default mix drawn with every combination allowed, kept when one of
    their objects is a held-out combination."""
    everything, held, clips = WorldConfig(exclude=()), set(DEFAULT_HELDOUT), []
    rng = np.random.default_rng([seed, 1])
    while len(clips) < count:
        scene = sample_scene(rng, everything)
        if any((o.color, o.shape, o.motion) in held for o in scene.objects):
            clips.append(clip_from_scene(scene, seed=len(clips)))
    return clips


def score(model: Captioner, clips: list, folder: Path, name: str) -> dict:
    """Accuracy per attribute and clips/s of `model` on `clips`, captioned from files."""
    paths = [write_video(folder / f"{name}-{i:04d}.mkv", c.frames, c.scene.fps)
             for i, c in enumerate(clips)]  # fmt: skip
    start = time.perf_counter()
    captions = [text for _, text in tqdm(caption_files(model, paths), total=len(paths),
                                         desc=name, unit="clip")]  # fmt: skip
    seconds = time.perf_counter() - start
    accuracy = caption_accuracy(captions, [c.truth for c in clips])
    return {"accuracy": accuracy, "clips_per_second": len(clips) / seconds, "example": captions[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="captioner folder or train-captioner run")
    parser.add_argument("--clips", type=int, default=500, help="clips per set")
    parser.add_argument("--seed", type=int, default=9001, help="seed of both sets")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = Captioner.load(args.model)
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for name, draw in (("default", default_clips), ("heldout", heldout_clips)):
            results[name] = score(model, draw(args.clips, args.seed), Path(folder), name)
            accuracy = results[name]["accuracy"]
            rows.append([name, *(f"{100 * accuracy[a]:.1f}%" for a in ATTRIBUTES),
                         results[name]["clips_per_second"]])  # fmt: skip
    table = markdown_table(["set", *ATTRIBUTES, "clips/s"], rows)
    body = (
        f"{args.clips} fresh clips per set (seed {args.seed}), captioned from files one at a "
        f"time by `{args.model}` ({model.config.width} wide, {model.config.encoder_layers}+"
        f"{model.config.decoder_layers} layers, patch {model.config.patch}). Floors: 95% on "
        f"the default mix, 90% on the held-out combinations.\n\n{table}\n\n"
        f'An example (default set): "{results["default"]["example"]}"'
    )
    command = "python benchmarks/bench_captioner.py " + " ".join(argv or sys.argv[1:])
    if args.record:
        record("captioner", "World captioner accuracy", body, command)
    else:
        print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
