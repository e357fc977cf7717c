"""A captioner training step on the default mix: one padded pass against passes of similar length.

The default mix's canvases run from 32 to 256 px, so a step's clips read from 20 to 1,280
encoder tokens each. `train-captioner` sorts a step's clips by length and runs them in passes
of about `--pass-tokens` padded tokens (`_passes`), adding the gradients. This times the
forward and backward of the bundled captioner on the same fresh clips (encoded once by the
world VAE, as the trainer's latent cache holds them) for each pass budget.

    python benchmarks/bench_captioner_step.py [--steps 3] [--batch 32] [--threads 2] [--record]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from tqdm import tqdm

from kinetoscope.captioner import Captioner
from kinetoscope.captioner.run import captioner_vae, fitted_latent
from kinetoscope.data.world.generate import clip_seed, make_clip
from kinetoscope.train.captioner import _batch, _passes, backward_in_passes
from record import markdown_table, record_or_print

ONE_PASS = 10**9


def encoded_steps(model: Captioner, steps: int, batch: int, seed: int) -> list[tuple[list, list]]:
    """Per step: the latents of `batch` fresh default-mix clips (the first frames the
    captioner reads, fitted as the trainer fits them) and their long captions' tokens."""
    vae, frames = captioner_vae(model), 1 + 4 * (model.config.max_latent_frames - 1)
    out = []
    for step in tqdm(range(steps), desc="encode", unit="step"):
        clips = [make_clip(clip_seed(seed, step * batch + i)) for i in range(batch)]
        latents = [fitted_latent(vae, clip.frames, frames) for clip in clips]
        tokens = [model.tokenizer.encode(clip.captions["long"]) for clip in clips]
        out.append((latents, tokens))
    return out


def step_seconds(model: Captioner, latents: list, tokens: list, budget: int) -> tuple[float, float]:
    """Seconds of one step's forward and backward in passes of `budget` padded tokens, and the
    share of the encoder tokens run that were padding."""
    batch = _batch(model, tokens)
    words = float((batch[:, 1:] != 0).sum())
    lengths = [model.tokens_read(z) for z in latents]
    passes = _passes(lengths, budget)
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    backward_in_passes(model, latents, batch, passes, len(passes), 1 / words,
                       contextlib.nullcontext())  # fmt: skip
    seconds = time.perf_counter() - start
    run = sum(len(rows) * max(lengths[j] for j in rows) for rows in passes)
    return seconds, 1 - sum(lengths) / run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="steps timed per budget")
    parser.add_argument("--batch", type=int, default=32, help="clips a step")
    parser.add_argument("--budgets", default="4096,2048,1024",
                        help="pass budgets in padded tokens (one padded pass is always timed)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=9002, help="seed of the clips")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = Captioner.load_bundled().train()
    steps = encoded_steps(model, args.steps, args.batch, args.seed)
    step_seconds(model, *steps[0], ONE_PASS)  # warm-up
    rows, baseline = [], None
    for budget in [ONE_PASS, *map(int, args.budgets.split(","))]:
        timed = [step_seconds(model, latents, tokens, budget) for latents, tokens in steps]
        seconds = statistics.median(s for s, _ in timed)
        baseline = baseline or seconds
        padding = statistics.mean(p for _, p in timed)
        rows.append(["one pass" if budget == ONE_PASS else f"{budget:,}", f"{seconds:.2f}",
                     f"{baseline / seconds:.1f}x", f"{100 * padding:.0f}%"])  # fmt: skip
    body = (
        f"The bundled captioner, forward and backward of a step of {args.batch} fresh "
        f"default-mix clips (seed {args.seed}), median of {args.steps} steps.\n\n"
        + markdown_table(["padded tokens a pass", "s / step", "speed-up", "padding"], rows)
    )
    record_or_print("captioner-step", "Captioner training step", body,
                    "bench_captioner_step.py", args.record)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
