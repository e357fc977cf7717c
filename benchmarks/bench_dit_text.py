"""DiT training-step throughput as clips per step grow: each token's own prompt vs more text.

The `mini` preset (16 latent channels, text width 384) on 64x64 clips of 17 frames, i.e.
latents 16 x 5 x 8 x 8 from an 8x spatial, 4x temporal VAE: 80 tokens each with patch
(1, 2, 2). Captions are 20 to 40 text tokens, padded to 40 (`TEXT_TOKENS`). For each number
of clips per step, packed into one sequence or into sequences of `--per-sequence` clips, one
forward + backward of the flow loss in fp32, timed as the median of `--steps` steps after a
warm-up. Two models with the same weights take turns step by step:

- after: `kinetoscope.dit.DiT` as it is (each run of a sample's tokens attends to the unmasked
  tokens of its own prompt only, `kinetoscope.nn.text_cross_attention`);
- before: `kinetoscope/dit.py` at the git revision `--before`, loaded from `git show`: at
  1347880 every sequence gathered the text rows of its own samples into R*S keys under a
  boolean mask (R the most samples in a sequence); at 6d03a5f every sequence attended over
  the batch's B*S text tokens.

    python benchmarks/bench_dit_text.py --before REV [--clips 1 8 32] [--per-sequence 4]
        [--steps 3] [--threads 1] [--record]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

from kinetoscope.diffusion import flow_loss, interpolate, token_timesteps, velocity_target
from kinetoscope.dit import DIT_PRESETS, DiT
from kinetoscope.patches import pack
from record import markdown_table, record_or_print

LATENT = (16, 5, 8, 8)  # a 64x64 clip of 17 frames through an 8x spatial, 4x temporal VAE
TEXT_TOKENS = 40  # S: captions of 20 to 40 tokens, padded to the longest
ROOT = Path(__file__).resolve().parents[1]


def dit_at(revision: str) -> types.ModuleType:
    """`kinetoscope/dit.py` as it was at a git revision, as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{revision}:src/kinetoscope/dit.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    module = types.ModuleType("dit_before")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{revision}:src/kinetoscope/dit.py", "exec"), module.__dict__)
    return module


def models(before: types.ModuleType) -> dict[str, torch.nn.Module]:
    """The current DiT and the one at `--before`, with the same small random weights."""
    torch.manual_seed(0)
    after = DiT(DIT_PRESETS["mini"])
    with torch.no_grad():
        for p in after.parameters():
            p.normal_(std=0.02)  # zero-initialised layers would make the step trivial
    old = before.DiT(before.DiTConfig(**vars(after.config)))
    old.load_state_dict(after.state_dict())
    return {"before": old.train(), "after": after.train()}


def step_function(model: torch.nn.Module, clips: int, per_sequence: int):
    """One training step's forward + backward on `clips` clips, and the packed batch."""
    g = torch.Generator().manual_seed(clips)
    latents = [torch.randn(LATENT, generator=g) for _ in range(clips)]
    tokens_per_clip = LATENT[1] * (LATENT[2] // 2) * (LATENT[3] // 2)  # patch (1, 2, 2): 80
    packed = pack(latents, token_budget=per_sequence * tokens_per_clip)  # (N, L, Din)
    t = token_timesteps(torch.rand(clips, generator=g), packed.sample_index)  # (N, L)
    noise = torch.randn(packed.tokens.shape, generator=g)
    text = torch.randn(clips, TEXT_TOKENS, model.config.text_dim, generator=g)
    lengths = torch.randint(20, TEXT_TOKENS + 1, (clips, 1), generator=g)
    text_mask = torch.arange(TEXT_TOKENS) < lengths  # (B, S)
    x_t = interpolate(packed.tokens, noise, t)
    target = velocity_target(packed.tokens, noise)

    def step() -> None:
        velocity = model(x_t, packed.coords, t, text, text_mask, packed.sample_index)
        flow_loss(velocity, target, packed.loss_mask).backward()

    return step, packed, text_mask


def time_pair(steps: dict, repeats: int) -> dict[str, float]:
    """Median seconds per step of each step function, run in turns after one warm-up each."""
    for step in steps.values():
        step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="git revision of the 'before' dit.py")
    parser.add_argument("--clips", type=int, nargs="+", default=[1, 8, 32], help="clips per step")
    parser.add_argument("--per-sequence", type=int, default=4, help="clips per packed sequence")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model and row")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    nets = models(dit_at(args.before))

    load_before = os.getloadavg()[0]
    rows = []
    for clips in args.clips:
        layouts = sorted({clips, min(args.per_sequence, clips)}, reverse=True)
        for per_sequence in layouts:  # one sequence of all clips, then sequences of a few
            steps = {}
            for name, net in nets.items():
                steps[name], packed, text_mask = step_function(net, clips, per_sequence)
            seconds = time_pair(steps, args.steps)
            real = sum(packed.lengths)
            most = max(len(samples) for samples in packed.sequences)  # R
            speed = {name: real / s for name, s in seconds.items()}
            rows.append(
                [
                    clips,
                    f"{len(packed.sequences)} x {packed.sequence_length}",
                    f"{most * TEXT_TOKENS} / {int(text_mask.sum(1).max())}",
                    f"{speed['before']:,.0f}",
                    f"{speed['after']:,.0f}",
                    f"{speed['after'] / speed['before']:.2f}x",
                ]
            )
            print(" | ".join(str(v) for v in rows[-1]), flush=True)
    load_after = os.getloadavg()[0]

    table = markdown_table(
        [
            "clips / step",
            "sequences x L",
            "text keys per token: before (R*S) / after (most)",
            "tokens/s before",
            "tokens/s after",
            "speed-up",
        ],
        rows,
    )
    threads = torch.get_num_threads()
    body = (
        "Training-step throughput of the `mini` preset (fp32, one forward + backward of the flow "
        "loss) as clips per step grow. Before: every packed sequence gathered its own samples' "
        "text rows and each token attended over all of them (R*S keys, R the most samples in a "
        "sequence, masked to its own row). After: each run of a sample's tokens attends to the "
        "unmasked tokens of its own prompt only (at most S, no mask). Clips are 64x64 x 17 "
        f"frames (latents {' x '.join(map(str, LATENT))}, 80 tokens each with patch (1, 2, 2)); "
        f"captions are 20 to 40 tokens of width 384, padded to S = {TEXT_TOKENS}. Each row packs "
        f"its clips into one sequence or into sequences of {args.per_sequence} clips; tokens/s "
        f"counts real tokens, the median of {args.steps} steps after a warm-up, with the two "
        f"models (same weights; 'before' is `src/kinetoscope/dit.py` at `{args.before}`) taking "
        f"turns. Timed with {threads} torch thread{'s' * (threads > 1)} while other work shared "
        f"the machine (load average {load_before:.1f} at the start, {load_after:.1f} at the "
        f"end): compare the columns of one row, not these numbers with other sections.\n\n{table}"
    )
    record_or_print(
        "dit-text", "DiT training step: text per sequence", body, "bench_dit_text.py", args.record
    )


if __name__ == "__main__":
    main()
