"""DiT training steps on one GPU: tokens/s and model FLOP utilisation at 16k-token sequences.

For each preset (default `small` and `base`), one training step as `kinetoscope train` takes
it on a GPU: a packed sequence of `--tokens` tokens made of samples of `--sample-tokens` tokens
(4 latent frames of a square patch grid each, 64 text tokens of width 384 per sample), bf16
autocast, forward + backward of the flow loss + an AdamW update, timed as the median of
`--steps` steps after two warm-up steps. Packed self-attention takes the kernel
`kinetoscope.nn.attention_kernel` picks (variable-length flash attention where available).

MFU is training FLOPs (3 x the forward's, `DiT.flops_per_token`) per second over the bf16
matmul peak measured at the start of the same run (the best of a few 8192^2 matmuls). Sized to
finish in well under 5 minutes on a current datacenter GPU; `--device cpu --presets tiny
--tokens 2048` runs the same code on a CPU in seconds (a smoke test, not a measurement).

    python benchmarks/bench_dit_gpu.py [--presets small base] [--tokens 16384] [--record]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from kinetoscope.dit import DIT_PRESETS, DiT
from kinetoscope.nn import attention_kernel
from kinetoscope.patches import pack
from record import markdown_table, record_or_print

TEXT_TOKENS = 64


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_peak(device: torch.device, size: int, repeats: int = 5) -> float:
    """Best bf16 matmul FLOP/s of a size x size product on `device`."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def packed_batch(preset: str, tokens: int, sample_tokens: int, device: torch.device):
    """A packed sequence of `tokens` tokens of samples of `sample_tokens` each, with its text."""
    config = DIT_PRESETS[preset]
    pt, ph, pw = config.patch
    side = round((sample_tokens / 4) ** 0.5)
    if 4 * side * side != sample_tokens or tokens % sample_tokens:
        raise ValueError("use --sample-tokens = 4 x a square, dividing --tokens")
    shape = (config.latent_channels, 4 * pt, side * ph, side * pw)
    samples = tokens // sample_tokens
    packed = pack([torch.randn(shape) for _ in range(samples)], tokens).to(device)
    text = torch.randn(samples, TEXT_TOKENS, config.text_dim, device=device)
    text_mask = torch.ones(samples, TEXT_TOKENS, dtype=torch.bool, device=device)
    return config, packed, text, text_mask


def measure(preset: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Median step time, tokens/s, FLOPs per step and peak memory of one preset."""
    config, packed, text, text_mask = packed_batch(preset, args.tokens, args.sample_tokens, device)
    model = DiT(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    t = torch.rand(packed.tokens.shape[:2], device=device)
    target = torch.randn_like(packed.tokens)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if args.precision == "bf16"
        else contextlib.nullcontext()
    )
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(args.steps + 2):
        synchronize(device)
        start = time.perf_counter()
        with autocast:
            velocity = model.forward_packed(packed.tokens, t, packed, text, text_mask)
        loss = (velocity.float() - target).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    return {
        "seconds": seconds,
        "tokens_per_s": args.tokens / seconds,
        "flops": 3 * model.flops_per_token(args.sample_tokens, TEXT_TOKENS) * args.tokens,
        "params": model.num_params(),
        "kernel": attention_kernel(device, dtype, config.head_dim),
        "memory_gib": torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["small", "base"], choices=DIT_PRESETS)
    parser.add_argument("--tokens", type=int, default=16384, help="tokens per packed sequence")
    parser.add_argument("--sample-tokens", type=int, default=1024, help="tokens per sample")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per preset")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (a smoke test)")
    parser.add_argument("--peak-size", type=int, default=8192, help="matmul size of the peak")
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run on a GPU machine, or pass --device cpu")
    peak = bf16_peak(device, args.peak_size if device.type == "cuda" else 512)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rows = []
    for preset in args.presets:
        result = measure(preset, args, device)
        flops_per_s = result["flops"] / result["seconds"]
        rows.append([preset, f"{result['params'] / 1e6:.1f}M", args.precision, result["kernel"],
                     result["seconds"], result["tokens_per_s"], flops_per_s / 1e12,
                     f"{flops_per_s / peak:.0%}", result["memory_gib"]])  # fmt: skip
        print(rows[-1], flush=True)
    table = markdown_table(
        ["preset", "params", "precision", "attention", "s / step", "tokens/s", "TFLOP/s", "MFU",
         "peak memory GiB"], rows,
    )  # fmt: skip
    body = (
        f"One training step (forward + backward + AdamW) of a packed sequence of {args.tokens} "
        f"tokens ({args.tokens // args.sample_tokens} samples of {args.sample_tokens}, "
        f"{TEXT_TOKENS} text tokens each), median of {args.steps} steps after two warm-ups, on "
        f"{name}. MFU: 3 x forward FLOPs per second over the bf16 matmul peak measured in this "
        f"run, {peak / 1e12:.0f} TFLOP/s.\n\n{table}"
    )
    record_or_print("dit-gpu", "DiT training step on one GPU", body, "bench_dit_gpu.py",
                    args.record)  # fmt: skip


if __name__ == "__main__":
    main()
