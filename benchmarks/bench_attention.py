"""Packed self-attention: the dense block-diagonal mask against attention within each sample.

Packed sequences of L = 1k, 4k and 16k tokens, made of samples of 256 to 1024 tokens (random
patch grids, seeded) and a little padding, each sample reading 64 text tokens of width 384,
in fp32 and under bf16 autocast. Two self-attention paths:

- dense: `patches.block_attention_mask(sample_index)`, an (L, L) boolean mask built per step
  and passed to `scaled_dot_product_attention` (the DiT's path before packed attention);
- packed: `kinetoscope.nn.packed_attention` (SDPA over each sample's segment on a CPU), no
  mask: the DiT's default.

Two tables: one DiT training step (forward + backward of a squared-velocity loss, `mini`
preset, same weights for both paths), and one self-attention call alone (forward + backward,
q, k, v of the mini preset's 4 heads of 64), which shows the L^2 that the DiT's activations
hide. Each row runs in a fresh subprocess so that one row's memory cannot hide another's: a
cold step measures the growth of the resident set's peak over its level before the step (the
high-water mark reset through `/proc/self/clear_refs`); `--steps` timed steps give the median
time (rows over 8k tokens take one); one more step under torch's profiler gives the peak of
live tensors and the largest single allocation (an (L, L) boolean mask is L^2 bytes).
tokens/s counts real tokens, not padding. A dense row is skipped when its peak of live
tensors, extrapolated from the dense row at a smaller L (the dense path's extra tensors grow
as L^2), would pass `--max-dense-gib`.

    python benchmarks/bench_attention.py [--lengths 1024 4096 16384] [--steps 2] [--threads 1]
        [--record]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from kinetoscope.dit import DIT_PRESETS, DiT
from kinetoscope.nn import masked_attention, packed_attention, packed_segments
from kinetoscope.patches import PackedBatch, block_attention_mask, pack
from record import markdown_table, record_or_print

PRESET = "mini"
TEXT_TOKENS = 64
SAMPLE_TOKENS = (256, 1024)  # each sample's token count lies in this range
MIB = 2**20


def sample_grids(length: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """Patch grids (gt, gh, gw) of samples of 256-1024 tokens, filling `length` tokens up to
    less than one more sample's worth of padding."""
    low, high = SAMPLE_TOKENS
    choices = [
        (gt, gh, gw)
        for gt in (1, 2, 3, 4)
        for gh in range(8, 33, 4)
        for gw in range(8, 33, 4)
        if low <= gt * gh * gw <= high
    ]
    generator = torch.Generator().manual_seed(seed)
    grids, room = [], length
    while room >= low:
        fitting = [g for g in choices if g[0] * g[1] * g[2] <= room]
        grid = fitting[int(torch.randint(len(fitting), (1,), generator=generator))]
        grids.append(grid)
        room -= grid[0] * grid[1] * grid[2]
    return grids


def batch(length: int, config) -> tuple[PackedBatch, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One packed sequence of `length` tokens, per-token timesteps and the samples' text."""
    generator = torch.Generator().manual_seed(1)
    pt, ph, pw = config.patch
    latents = [
        torch.randn(config.latent_channels, gt * pt, gh * ph, gw * pw, generator=generator)
        for gt, gh, gw in sample_grids(length)
    ]
    packed = pack(latents, token_budget=length)
    assert packed.num_sequences == 1
    t = torch.rand(packed.tokens.shape[:2], generator=generator) * packed.valid_mask
    text = torch.randn(len(latents), TEXT_TOKENS, config.text_dim, generator=generator)
    return packed, t, text, torch.ones(len(latents), TEXT_TOKENS, dtype=torch.bool)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_growth(run) -> float:
    """MiB by which the resident set peaks above its level before `run()`."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # high-water mark := current RSS
    before = _status_kib("VmRSS")
    run()
    return (_status_kib("VmHWM") - before) * 1024 / MIB


def tensor_peaks(run) -> tuple[float, float]:
    """MiB of tensors live at once during `run()` beyond those before, and of the largest
    single allocation, from the allocation events of torch's profiler."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    live = peak = largest = 0
    for event in events:
        live += event.nbytes()  # negative for a free
        peak, largest = max(peak, live), max(largest, event.nbytes())
    return peak / MIB, largest / MIB


def dit_step(job: dict):
    """A DiT training step on the packed batch of `job`, and the batch."""
    config = DIT_PRESETS[PRESET]
    model = DiT(config)
    with torch.no_grad():  # small random weights: zero-initialised layers make a trivial step
        for p in model.parameters():
            p.normal_(std=0.02)
    packed, t, text, text_mask = batch(job["length"], config)
    bf16 = job["precision"] == "bf16"

    def step() -> None:
        mask = block_attention_mask(packed.sample_index) if job["path"] == "dense" else None
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            velocity = model(packed.tokens, packed.coords, t, text, text_mask, None, mask)
        velocity.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    return step, packed


def attention_step(job: dict):
    """Self-attention alone over the packed batch of `job`: q, k, v (1, H, L, Dh) of the
    preset's heads, forward and backward; and the batch."""
    config = DIT_PRESETS[PRESET]
    packed = batch(job["length"], config)[0]
    dtype = torch.bfloat16 if job["precision"] == "bf16" else torch.float32
    generator = torch.Generator().manual_seed(2)
    shape = (1, config.num_heads, packed.sequence_length, config.head_dim)
    q, k, v = (torch.randn(shape, generator=generator, dtype=dtype).requires_grad_() for _ in "qkv")

    def step() -> None:
        ids = packed.sample_index
        if job["path"] == "dense":
            out = masked_attention(q, k, v, block_attention_mask(ids))  # (1, H, L, Dh)
        else:
            out = packed_attention(q, k, v, packed_segments(ids))  # (1, H, L, Dh)
        out.float().square().mean().backward()
        for x in (q, k, v):
            x.grad = None

    return step, packed


def worker(job: dict) -> dict:
    """One row: build the step, then a cold step, timed steps, a profiled step."""
    torch.set_num_threads(job["threads"])
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    step, packed = (dit_step if job["kind"] == "dit" else attention_step)(job)
    rss = peak_growth(step)
    times = []
    for _ in range(job["steps"]):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    tensors, largest = tensor_peaks(step)
    return {
        "seconds": statistics.median(times),
        "real_tokens": int(packed.valid_mask.sum()),
        "samples": packed.num_samples,
        "rss_mib": rss,
        "tensor_mib": tensors,
        "largest_mib": largest,
    }


def measure(job: dict) -> dict:
    """Run `worker(job)` in a fresh Python process and return its result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        raise RuntimeError(f"worker failed on {job}:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def dense_estimate(length: int, rows: dict) -> float | None:
    """The dense row's peak of live tensors (MiB) at `length`, from the largest L measured so
    far: the packed peak at `length` plus the dense path's extra there, scaled by L^2."""
    measured = [n for n in rows if n < length and "dense" in rows[n]]
    if not measured or "packed" not in rows[length]:
        return None
    n = max(measured)
    extra = rows[n]["dense"]["tensor_mib"] - rows[n]["packed"]["tensor_mib"]
    return rows[length]["packed"]["tensor_mib"] + max(extra, 0.0) * (length / n) ** 2


HEADERS = [
    "L",
    "samples (real tokens)",
    "precision",
    "self-attention",
    "s / step",
    "tokens/s",
    "dense / packed time",
    "peak RSS growth MiB",
    "peak tensors MiB",
    "largest allocation MiB",
]


def table(kind: str, args) -> tuple[list[list[str]], list[str]]:
    """The rows of one table (`kind` "dit" or "attention"), and the dense rows skipped."""
    out, skipped = [], []
    for precision in args.precisions:
        rows: dict[int, dict[str, dict]] = {}
        for length in sorted(args.lengths):
            rows[length] = {}
            for path in ("packed", "dense"):
                estimate = dense_estimate(length, rows) if path == "dense" else None
                if estimate is not None and estimate > args.max_dense_gib * 1024:
                    skipped.append(f"{precision} at L = {length:,} (~{estimate / 1024:.1f} GiB)")
                    print(f"skipped {kind} dense {skipped[-1]}", flush=True)
                    continue
                steps = args.steps if length <= 8192 else 1
                job = {"kind": kind, "length": length, "precision": precision, "path": path}
                result = measure(job | {"steps": steps, "threads": args.threads})
                rows[length][path] = result
                ratio = result["seconds"] / rows[length]["packed"]["seconds"]
                out.append(
                    [
                        f"{length:,}",
                        f"{result['samples']} ({result['real_tokens']:,})",
                        precision,
                        path,
                        f"{result['seconds']:.3g}",
                        f"{result['real_tokens'] / result['seconds']:,.0f}",
                        f"{ratio:.1f}x" if path == "dense" else "",
                        f"{result['rss_mib']:,.0f}",
                        f"{result['tensor_mib']:,.0f}",
                        f"{result['largest_mib']:,.1f}",
                    ]
                )
                print(kind, " | ".join(out[-1]), flush=True)
    return out, skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per row (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--max-dense-gib", type=float, default=2.0, help="skip bigger dense rows")
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    torch.set_num_threads(args.threads)  # as in the workers (and in the recorded header)
    load_before = os.getloadavg()[0]
    dit_rows, dit_skipped = table("dit", args)
    attention_rows, attention_skipped = table("attention", args)
    load_after = os.getloadavg()[0]

    def skips(skipped: list[str]) -> str:
        if not skipped:
            return ""
        return (
            "\n\nDense rows skipped, as their peak of live tensors extrapolated from the dense "
            f"row at a smaller L (the dense path's extra tensors grow as L^2) passes "
            f"{args.max_dense_gib:g} GiB: " + "; ".join(skipped) + "."
        )

    body = (
        f"Packed sequences of L tokens: samples of {SAMPLE_TOKENS[0]} to {SAMPLE_TOKENS[1]} "
        f"tokens and a little padding, {TEXT_TOKENS} text tokens per sample. dense: the "
        "block-diagonal (L, L) mask into SDPA, the path before packed attention; packed: "
        "`nn.packed_attention`, SDPA per sample segment. Median of "
        f"{args.steps} step(s) after a cold one (one at 16k), {args.threads} torch thread(s), "
        "each row in a fresh process; tokens/s counts real tokens. Peak RSS growth is the cold "
        "step's; peak tensors and the largest allocation come from the profiler's allocation "
        "events (an (L, L) bool mask is L^2 bytes: 16 MiB at 4k, 256 MiB at 16k, 1 GiB at 32k; "
        "no allocation of a packed row comes near it).\n\n"
        f"DiT training step (`{PRESET}` preset, forward + backward):\n\n"
        f"{markdown_table(HEADERS, dit_rows)}{skips(dit_skipped)}\n\n"
        "Self-attention alone (one call, forward + backward, q, k, v of 4 heads of 64):\n\n"
        f"{markdown_table(HEADERS, attention_rows)}{skips(attention_skipped)}\n\n"
        f"Load average (1 min) {load_before:.1f} at the start and {load_after:.1f} at the end: "
        "the machine was shared with other work, so compare rows of one run."
    )
    record_or_print("attention", "Packed attention", body, "bench_attention.py", args.record)


if __name__ == "__main__":
    main()
