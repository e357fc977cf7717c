"""DiT training-step throughput and model FLOP utilisation, beside diffusers' Wan transformer.

For two presets, in fp32 and under bf16 autocast, one forward + backward of a flow-matching
loss over one video's tokens (16 latent channels, patch (1, 2, 2), `--tokens` tokens, 64 text
tokens of width 384), timed as the median of `--steps` steps after one warm-up step:

- ours: `kinetoscope.dit.DiT` (block-diagonal mask, per-token timesteps, text mask);
- Wan: diffusers' `WanTransformer3DModel` with the same width, depth, heads, MLP width, text
  width and token count, random weights (the reference Sora-class video DiT).

MFU is training FLOPs (3 x forward) per second over the matmul peak measured at the start of
the same run (the best of a few square matmuls of that dtype). Our forward FLOPs come from
`DiT.flops_per_token` (checked against a FLOP counter in the tests), Wan's from
`torch.utils.flop_counter` over one forward with attention as plain matmuls.

    python benchmarks/bench_dit.py [--presets mini small] [--tokens 256] [--steps 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from kinetoscope.dit import DIT_PRESETS, DiT, DiTConfig
from kinetoscope.patches import pack
from record import markdown_table, record

TEXT_TOKENS = 64


def matmul_peak(dtype: torch.dtype, size: int = 1024, repeats: int = 3) -> float:
    """Best FLOP/s of a size x size `F.linear` in `dtype` over a few tries.

    `F.linear` is the path an autocast `nn.Linear` takes (oneDNN for bf16 on a CPU); a plain
    bf16 `a @ b` can fall back to a far slower kernel on CPUs without native bf16 support.
    """
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    F.linear(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        F.linear(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def latent_shape(config: DiTConfig, tokens: int) -> tuple[int, int, int, int]:
    """A latent (c, t, h, w) of `tokens` patch tokens: 4 frames of a square grid of patches."""
    side = round((tokens / 4) ** 0.5)
    if 4 * side * side != tokens or config.patch != (1, 2, 2):
        raise ValueError("use --tokens = 4 x a square (e.g. 256, 1024, 4096) and patch (1, 2, 2)")
    return config.latent_channels, 4, 2 * side, 2 * side


def randomize(model: torch.nn.Module) -> None:
    """Small random weights everywhere (zero-initialised layers would make the step trivial)."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.02)


def autocast(dtype: torch.dtype):
    if dtype == torch.bfloat16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def time_steps(step, dtype: torch.dtype, steps: int) -> float:
    """Median seconds of `step()` (forward + backward) after one warm-up."""
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        with autocast(dtype):
            loss = step()
        loss.backward()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def ours(config: DiTConfig, tokens: int):
    """A step function of our DiT on one packed video, and its forward FLOPs."""
    model = DiT(config)
    randomize(model)
    packed = pack([torch.randn(latent_shape(config, tokens))])
    t = torch.rand(packed.tokens.shape[:2])
    text = torch.randn(1, TEXT_TOKENS, config.text_dim)
    text_mask = torch.ones(1, TEXT_TOKENS, dtype=torch.bool)
    target = torch.randn_like(packed.tokens)

    def step():
        velocity = model.forward_packed(packed.tokens, t, packed, text, text_mask)
        return (velocity.float() - target).square().mean()

    return step, model.flops_per_token(tokens, TEXT_TOKENS) * tokens, model.num_params()


def wan(config: DiTConfig, tokens: int):
    """The same step for diffusers' WanTransformer3DModel of the same sizes."""
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(
        patch_size=config.patch,
        num_attention_heads=config.num_heads,
        attention_head_dim=config.head_dim,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        text_dim=config.text_dim,
        freq_dim=config.frequency_dim,
        ffn_dim=config.mlp_hidden,
        num_layers=config.depth,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
    )
    randomize(model)
    x = torch.randn(1, *latent_shape(config, tokens))
    timestep = torch.rand(1) * 1000
    text = torch.randn(1, TEXT_TOKENS, config.text_dim)
    target = torch.randn_like(x)

    def step():
        velocity = model(x, timestep, text, return_dict=False)[0]
        return (velocity.float() - target).square().mean()

    with torch.no_grad(), FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        model(x, timestep, text, return_dict=False)
    return step, counter.get_total_flops(), sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["mini", "small"], choices=DIT_PRESETS)
    parser.add_argument("--tokens", type=int, default=256, help="tokens per step (4 x square)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per row")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (on a busy machine, 1 is steadier)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # Wan's fp32 norm weights meet bf16 activations under autocast; the warning repeats per call.
    warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")

    load_before = os.getloadavg()[0]
    peaks = {dtype: matmul_peak(dtype) for dtype in (torch.float32, torch.bfloat16)}
    rows = []
    for name in args.presets:
        config = DIT_PRESETS[name]
        for label, build in (("kinetoscope DiT", ours), ("diffusers Wan", wan)):
            step, forward_flops, params = build(config, args.tokens)
            for dtype, dtype_name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16 autocast")):
                seconds = time_steps(step, dtype, args.steps)
                achieved = 3 * forward_flops / seconds
                rows.append(
                    [
                        name,
                        label,
                        f"{params / 1e6:.1f}M",
                        dtype_name,
                        f"{seconds:.2f}",
                        f"{args.tokens / seconds:,.0f}",
                        f"{achieved / 1e9:.0f}",
                        f"{achieved / peaks[dtype]:.0%}",
                    ]
                )
                print(" | ".join(str(v) for v in rows[-1]), flush=True)
    load_after = os.getloadavg()[0]

    table = markdown_table(
        ["preset", "model", "params", "precision", "s / step", "tokens/s", "GFLOP/s", "MFU"],
        rows,
    )
    body = (
        f"One forward + backward of a flow loss over {args.tokens} tokens (one video, patch "
        f"(1, 2, 2)) and {TEXT_TOKENS} text tokens of width 384; median of "
        f"{args.steps} steps after a warm-up. Wan is diffusers' `WanTransformer3DModel` with "
        "the same width, depth, heads, MLP and text widths (random weights). MFU is 3 x forward "
        "FLOPs per second over the matmul peak measured in this run: "
        f"fp32 {peaks[torch.float32] / 1e9:.0f} GFLOP/s, bf16 {peaks[torch.bfloat16] / 1e9:.0f} "
        f"GFLOP/s (CPU capability {torch.backends.cpu.get_cpu_capability()}).\n\n{table}\n\n"
        f"Load average (1 min) {load_before:.1f} at the start and {load_after:.1f} at the end: "
        "the machine was shared with other work, so these numbers are noisy."
    )
    command = " ".join(["python benchmarks/bench_dit.py", *sys.argv[1:]])
    record("dit", "DiT training step", body, command)


if __name__ == "__main__":
    main()
