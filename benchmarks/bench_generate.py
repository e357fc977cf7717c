"""Generation latency of a model: text, sampling and decoding at a few sizes, fp32 and bf16.

    python benchmarks/bench_generate.py --record           # the bundled world model
    python benchmarks/bench_generate.py --model RUN --steps 30 --sizes 64x64x17

Each row loads the pipeline once per precision, generates one warm-up video at the smallest
size (not timed: first calls pay for one-off allocations), then one video per size with
classifier-free guidance and the Euler sampler, and reports the pipeline's own split of the
time (`Pipeline.timings`).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from kinetoscope.pipeline import DEFAULT_GUIDANCE, Pipeline
from record import markdown_table, record_or_print

SIZES = ("64x64x17", "128x128x33", "256x144x33")
PROMPT = "a medium red circle moving right and a small blue square falling, on a black background"


def parse_size(text: str) -> tuple[int, int, int]:
    """'WxHxT' -> (width, height, frames)."""
    try:
        width, height, frames = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--sizes takes WIDTHxHEIGHTxFRAMES like 64x64x17, got {text!r}") from None
    return width, height, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model folder (default: the bundled world model)")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), help="WxHxT sizes")
    parser.add_argument("--steps", type=int, default=30, help="sampler steps")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [parse_size(s) for s in args.sizes]

    load_before = os.getloadavg()[0]
    rows = []
    for precision in args.precisions:
        pipe = Pipeline.load(args.model, precision=precision, sizes=sizes)
        small = min(sizes, key=lambda s: s[0] * s[1] * s[2])
        pipe.generate(PROMPT, width=small[0], height=small[1], frames=small[2], steps=2,
                      progress=False)  # fmt: skip
        for width, height, frames in sizes:
            start = time.perf_counter()
            pipe.generate(
                PROMPT,
                width=width,
                height=height,
                frames=frames,
                steps=args.steps,
                guidance=DEFAULT_GUIDANCE,
                progress=False,
            )
            total = time.perf_counter() - start
            t = pipe.timings
            rows.append(
                [
                    f"{width}x{height}x{frames}",
                    precision,
                    f"{t['text']:.2f}",
                    f"{t['sampling']:.1f}",
                    f"{t['decoding']:.2f}",
                    f"{total:.1f}",
                    f"{frames / total:.2f}",
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
    load_after = os.getloadavg()[0]
    table = markdown_table(
        ["W x H x T", "precision", "text s", "sampling s", "decoding s", "total s", "frames/s"],
        rows,
    )
    model = args.model or "the bundled world model"
    body = (
        f"One video per row from {model}, {args.steps} Euler steps with classifier-free "
        f"guidance {DEFAULT_GUIDANCE:g} (conditional and unconditional in one batched call), "
        "after one untimed warm-up generation; the split is the pipeline's own "
        f"(`Pipeline.timings`). bf16 is autocast for the DiT; the VAE decodes in fp32.\n\n"
        f"{table}\n\nLoad average (1 min) {load_before:.1f} at the start and {load_after:.1f} "
        "at the end."
    )
    record_or_print("generate", "Generation latency", body, "bench_generate.py", args.record)


if __name__ == "__main__":
    main()
