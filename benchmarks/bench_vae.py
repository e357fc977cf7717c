"""VAE encode + decode throughput and memory, beside diffusers' Wan VAE of similar size.

Two tables, each row measured in a fresh subprocess so that one row's memory peak cannot
hide another's:

- Throughput: one encode (posterior mean) and one decode of a random video at 64x64x33 and
  256x256x33 (width x height x frames), in fp32 and under bf16 autocast, for our preset(s)
  (`kinetoscope.vae.VideoVAE`, one pass over all frames) and diffusers' `AutoencoderKLWan`
  (Wan 2.1's causal 3D VAE, random weights) with widths chosen so its parameter count is close
  to the preset's (`WAN_MATCH`). Both models take 1 + 4k frames and code 8x8 pixels per latent
  pixel, so both see the same input. Times are medians of `--repeats` runs after a first cold
  run; 256x256 rows in bf16 get one timed run. FLOPs (convolutions, matmuls and attention, from
  `torch.utils.flop_counter`) are counted on 1- and 5-frame clips and extended to the row's
  frame count, which is exact for these causal models (the cost is a + b k for 1 + 4k frames).
- Long video: peak memory of decoding 33 and 257 frames at 64x64, in fp32, for our chunked
  decode (`decode(latents, chunk_frames=4)`, as the pipeline does), our one-pass decode, and
  Wan's decode (which always runs one latent frame at a time with its causal cache).

Peak memory is the growth of the process's peak resident set over its resident set just
before the measured run, after the model and the input are built: the kernel's high-water
mark is reset first (`/proc/self/clear_refs`), or where that is not possible, `ru_maxrss`
after the run minus `ru_maxrss` before it is used. For the throughput rows it is the first
(cold) run's, with the C library's default allocator settings; the long-video rows fix
glibc's mmap threshold (`FIXED_MALLOC`) so that it follows live memory, and also report the
peak of live tensors from torch's profiler. Denormals are flushed to zero in every worker so
that random weights cannot slow one model down through subnormal arithmetic.

    python benchmarks/bench_vae.py [--presets world base] [--precisions fp32 bf16]
        [--repeats 2] [--threads 2] [--quick] [--record]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from kinetoscope.vae.model import VAE_PRESETS, VideoVAE
from record import markdown_table, record

# Wan 2.1's layout (four levels of 3x3x3 residual blocks, 8x in space, time halved at the last
# two downsamples, a single-head attention in each mid block, num_res_blocks + 1 blocks per
# decoder level), with widths chosen so that the parameter count is close to our preset's.
WAN_MATCH = {
    # 3.2M vs 3.2M: widths 32, 64, 64, 64 against our 32, 64, 128 (after a 2x2 pixel fold).
    "world": {"base_dim": 32, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1},
    # 40M vs 39M: the same widths (64, 128, 256, 256) and block counts as our base preset.
    "base": {"base_dim": 64, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 1},
}
SIZES = (64, 256)  # square frames, pixels
FRAMES = 33  # 1 + 4 x 8
LONG_FRAMES = (33, 257)  # the long-video memory test, at 64x64
DECODE_CHUNK = 4  # latent frames per decode call after the first, as in the pipeline
# 33 frames is the shortest clip that the chunked decode splits (1 + 2 chunks of 4 latent frames).
QUICK = {"sizes": (64,), "frames": 17, "long_frames": (33, 65)}
# For the long-video rows: glibc's default mmap threshold slides up to 32 MiB as blocks are
# freed, after which freed buffers stay in the heap and the resident peak depends on the order
# of frees (tens of MiB of noise at 64x64). A fixed threshold returns every large buffer to
# the OS, so the resident peak follows live memory; other C libraries ignore the variable.
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
MODELS = {"ours": "kinetoscope", "wan": "diffusers Wan"}
MIB = 2**20


# ---------------------------------------------------------------------------------------------
# The worker: one measurement in its own process


def build(model: str, preset: str) -> torch.nn.Module:
    """Our preset, or the Wan VAE matched to it, in eval mode with seeded random weights."""
    torch.manual_seed(0)
    config = VAE_PRESETS[preset]
    if model == "ours":
        return VideoVAE(config).eval()
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(z_dim=config.latent_channels, **WAN_MATCH[preset]).eval()


def codec(model: str, vae: torch.nn.Module, chunk: int | None):
    """(encode, decode) callables: pixels -> latents (posterior mean) -> pixels."""
    if model == "ours":
        return vae.encode, lambda z: vae.decode(z, chunk_frames=chunk)
    return (lambda x: vae.encode(x).latent_dist.mode()), (lambda z: vae.decode(z).sample)


def autocast(precision: str):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_growth(run) -> tuple[float, object]:
    """MiB by which the resident set peaks above its level before `run()`, and run's result."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # high-water mark := current RSS
    except OSError:  # not Linux, or not allowed: the peak so far is the baseline
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        result = run()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 / MIB, result
    before = _status_kib("VmRSS")
    result = run()
    return (_status_kib("VmHWM") - before) * 1024 / MIB, result


def tensor_peak(run) -> float | None:
    """MiB of tensors live at once during `run()` beyond those live before, or None.

    From the allocation events of torch's profiler: exact, but blind to what the memory
    allocator and oneDNN keep beyond the tensors themselves (the resident-set peak sees that).
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    results = getattr(prof.profiler, "kineto_results", None)  # not public: degrade to None
    if results is None:
        return None
    events = sorted(
        (e for e in results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    live = peak = 0
    for event in events:
        live += event.nbytes()  # negative for a free
        peak = max(peak, live)
    return peak / MIB


def count_flops(encode, decode, size: int, frames: int) -> float:
    """FLOPs of encode + decode at `frames` = 1 + 4k, from exact counts at 1 and 5 frames."""
    counts = []
    for t in (1, 5):
        x = torch.rand(1, 3, t, size, size) * 2 - 1
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            decode(encode(x))
        counts.append(counter.get_total_flops())
    return counts[0] + (counts[1] - counts[0]) * (frames - 1) // 4


def worker(job: dict) -> dict:
    """Run one measurement described by `job` and return its numbers."""
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    torch.set_flush_denormal(True)
    vae = build(job["model"], job["preset"])
    result = {"params": sum(p.numel() for p in vae.parameters())}
    size, frames = job["size"], job["frames"]
    encode, decode = codec(job["model"], vae, job.get("chunk"))
    generator = torch.Generator().manual_seed(0)

    if job["kind"] == "decode":
        config = VAE_PRESETS[job["preset"]]
        s = config.spatial_factor
        t = 1 + (frames - 1) // config.temporal_factor
        z = torch.randn(1, config.latent_channels, t, size // s, size // s, generator=generator)

        def decode_once() -> tuple[float, tuple[int, ...]]:
            start = time.perf_counter()
            with torch.inference_mode():
                shape = tuple(decode(z).shape)
            return time.perf_counter() - start, shape

        peak, (seconds, shape) = peak_growth(decode_once)
        assert shape == (1, 3, frames, size, size), shape
        tensors = tensor_peak(decode_once)  # a second run, under the profiler
        return result | {"peak_mib": peak, "tensor_mib": tensors, "seconds": seconds}

    x = torch.rand(1, 3, frames, size, size, generator=generator) * 2 - 1

    def roundtrip() -> tuple[float, float]:
        with torch.inference_mode(), autocast(job["precision"]):
            start = time.perf_counter()
            z = encode(x)
            middle = time.perf_counter()
            y = decode(z)
            end = time.perf_counter()
        assert y.shape == x.shape, (y.shape, x.shape)
        return middle - start, end - middle

    peak, _ = peak_growth(roundtrip)  # the cold run: its memory, not its time
    times = [roundtrip() for _ in range(job["timed"])]
    result |= {
        "peak_mib": peak,
        "encode_s": statistics.median(t[0] for t in times),
        "decode_s": statistics.median(t[1] for t in times),
    }
    if job["flops"]:
        result["flops"] = count_flops(encode, decode, size, frames)
    return result


def measure(job: dict, env: dict[str, str] | None = None) -> dict:
    """Run `worker(job)` in a fresh Python process (`env` added to ours), return its result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, env=os.environ | (env or {})
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        raise RuntimeError(f"worker failed on {job}:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------
# The driver


def millions(n: int) -> str:
    return f"{n / 1e6:.1f}M"


def mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def throughput(args, sizes, frames) -> tuple[list[list], dict]:
    """Rows of the throughput table, and the raw results keyed by (preset, model, size, prec)."""
    rows, results = [], {}
    for preset in args.presets:
        for size in sizes:
            for i, precision in enumerate(args.precisions):
                for model in MODELS:
                    timed = 1 if precision == "bf16" and size >= 256 else args.repeats
                    job = {
                        "kind": "roundtrip",
                        "model": model,
                        "preset": preset,
                        "size": size,
                        "frames": frames,
                        "precision": precision,
                        "timed": timed,
                        "flops": i == 0,  # FLOPs do not depend on precision: count once
                        "threads": args.threads,
                    }
                    r = measure(job)
                    if "flops" not in r:
                        r["flops"] = results[preset, model, size, args.precisions[0]]["flops"]
                    results[preset, model, size, precision] = r
                    seconds = r["encode_s"] + r["decode_s"]
                    rows.append(
                        [
                            preset,
                            MODELS[model],
                            millions(r["params"]),
                            f"{size}x{size}x{frames}",
                            "fp32" if precision == "fp32" else "bf16 autocast",
                            f"{r['encode_s']:.2f}",
                            f"{r['decode_s']:.2f}",
                            f"{frames / seconds:.1f}",
                            f"{r['flops'] / frames / 1e9:.2f}",
                            f"{r['flops'] / seconds / 1e9:.0f}",
                            f"{r['peak_mib']:.0f}",
                        ]
                    )
                    print(" | ".join(rows[-1]), flush=True)
    return rows, results


def long_video(args, frame_counts) -> tuple[list[list], dict]:
    """Rows of the long-video decode memory table, and the raw results."""
    modes = [
        ("ours", DECODE_CHUNK, f"chunks of {DECODE_CHUNK} latent frames"),
        ("ours", None, "one pass"),
        ("wan", None, "1 latent frame per call (its cache)"),
    ]
    rows, results = [], {}
    for preset in args.presets:
        for model, chunk, label in modes:
            for frames in frame_counts:
                job = {
                    "kind": "decode",
                    "model": model,
                    "preset": preset,
                    "size": 64,
                    "frames": frames,
                    "chunk": chunk,
                    "threads": args.threads,
                }
                r = measure(job, env=FIXED_MALLOC)
                results[preset, model, chunk, frames] = r
                output_mib = 3 * frames * 64 * 64 * 4 / MIB
                rows.append(
                    [
                        preset,
                        MODELS[model],
                        label,
                        f"64x64x{frames}",
                        f"{r['seconds']:.2f}",
                        f"{r['peak_mib']:.0f}",
                        mib(r["tensor_mib"]),
                        f"{output_mib:.1f}",
                    ]
                )
                print(" | ".join(rows[-1]), flush=True)
    return rows, results


def notes(args, speed: dict, memory: dict, sizes, frames, frame_counts) -> str:
    """What the numbers say about us against Wan, measured where possible."""
    lines = []
    for preset in args.presets:
        for size in sizes:
            for precision in args.precisions:
                ours, wan = (
                    speed[preset, "ours", size, precision],
                    speed[preset, "wan", size, precision],
                )
                t_ours = ours["encode_s"] + ours["decode_s"]
                t_wan = wan["encode_s"] + wan["decode_s"]
                rate_ours, rate_wan = ours["flops"] / t_ours, wan["flops"] / t_wan
                lines.append(
                    f"- {preset}, {size}x{size}x{frames} {precision}: ours runs at "
                    f"{t_wan / t_ours:.2g}x Wan's frames/s; Wan does "
                    f"{wan['flops'] / ours['flops']:.2g}x our FLOPs per frame at "
                    f"{rate_wan / rate_ours:.2g}x our GFLOP/s."
                )
        short, long = frame_counts
        for model, chunk, label in (
            ("ours", DECODE_CHUNK, "ours chunked"),
            ("ours", None, "ours one pass"),
            ("wan", None, "Wan"),
        ):
            a, b = memory[preset, model, chunk, short], memory[preset, model, chunk, long]
            lines.append(
                f"- {preset}, decoding {short} -> {long} frames, {label}: peak RSS "
                f"{a['peak_mib']:.0f} -> {b['peak_mib']:.0f} MiB, peak tensors "
                f"{mib(a['tensor_mib'])} -> {mib(b['tensor_mib'])} MiB (the output itself grows by "
                f"{3 * (long - short) * 64 * 64 * 4 / MIB:.0f} MiB)."
            )
    why = [architecture(preset) for preset in args.presets]
    why.append(
        "- Where the GFLOP/s differ, the cause is efficiency, not architecture. Possible "
        "causes, not measured separately: Wan streams every clip (encode 1 + 4 frames per "
        "call, decode one latent frame per call), so each 3D conv sees a few frames at a time "
        "and each causal conv clones and concatenates its 2-frame cache per call, plus an "
        "F.pad copy of every conv input; our throughput rows run one pass over all frames "
        "(bigger convs, one temporal pad per conv), and our norms compute in float32. The "
        "long-video table shows what chunking costs us: compare the seconds of chunked and "
        "one-pass decoding."
    )
    return "\n".join(lines + why)


def architecture(preset: str) -> str:
    """How our preset differs from its Wan match in work per frame, read from the configs."""
    config, blocks = VAE_PRESETS[preset], WAN_MATCH[preset]["num_res_blocks"]
    ours = []
    if config.patch_size > 1:
        p = config.patch_size
        ours.append(
            f"it folds {p}x{p} pixels into channels first, so no conv runs at full resolution"
        )
    flat = [i for i, k in enumerate(config.temporal_kernel) if k == 1]
    if flat:
        where = "" if len(flat) == len(config.channels) else f" at levels {flat}"
        ours.append(f"its residual blocks{where} are per-frame 2D (1x3x3, a third of a 3x3x3)")
    if config.temporal_down[0]:
        ours.append(
            "it halves time at its first downsample, so only its first level runs on every "
            "frame (Wan's first two do)"
        )
    ours.append(
        f"it has {config.encoder_blocks} encoder and {config.decoder_blocks} decoder residual "
        f"blocks per level against Wan's {blocks} and {blocks + 1}"
    )
    ours.append(
        "its down- and upsampling convs are 3x3x3 where Wan's are 2D 3x3 with a separate "
        "3x1x1 time conv (and Wan halves the channels at each upsampling)"
    )
    return (
        f"- Our {preset} preset against its Wan match, in work per frame: "
        + "; ".join(ours)
        + ". Wan adds a "
        "single-head attention over each frame's latent pixels in both mid blocks. These show "
        "in the FLOP-per-frame ratio above."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["world"], choices=sorted(WAN_MATCH))
    parser.add_argument(
        "--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"]
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed runs per row after a cold one"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (on a busy machine, 1 is steadier)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke check: 64x64 only, 17 frames, 33 vs 65 long"
    )
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.quick and args.record:
        parser.error("--record would replace real results with a smoke check; drop --quick")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)  # for the machine line of the record
    sizes, frames, frame_counts = SIZES, FRAMES, LONG_FRAMES
    if args.quick:
        sizes, frames, frame_counts = QUICK["sizes"], QUICK["frames"], QUICK["long_frames"]
        args.repeats = 1

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    speed_rows, speed = throughput(args, sizes, frames)
    memory_rows, memory = long_video(args, frame_counts)
    minutes = (time.perf_counter() - start) / 60
    load_after = os.getloadavg()[0]

    speed_table = markdown_table(
        [
            "preset",
            "model",
            "params",
            "W x H x T",
            "precision",
            "encode s",
            "decode s",
            "frames/s",
            "GFLOP / frame",
            "GFLOP/s",
            "peak RSS MiB",
        ],
        speed_rows,
    )
    memory_table = markdown_table(
        [
            "preset",
            "model",
            "decode",
            "W x H x T",
            "seconds",
            "peak RSS MiB",
            "peak tensors MiB",
            "output MiB",
        ],
        memory_rows,
    )
    matches = ", ".join(
        f"{p}: `AutoencoderKLWan({', '.join(f'{k}={v}' for k, v in WAN_MATCH[p].items())})`"
        for p in args.presets
    )
    body = (
        f"Encode (posterior mean) + decode of one random video, {frames} frames, each row in a "
        "fresh process; our VAE in one pass, Wan 2.1's VAE from diffusers with random weights "
        f"and a similar parameter count ({matches}). Seconds are the median of {args.repeats} "
        "timed run(s) after a cold one (one for bf16 at 256x256); peak RSS MiB is the cold run's "
        "growth of peak resident memory over the model and input; GFLOP counts convolutions, "
        "matmuls and attention (torch's FLOP counter).\n\n"
        f"{speed_table}\n\n"
        "Decoding long videos at 64x64 in fp32, each row in a fresh process with glibc's mmap "
        "threshold fixed at 128 KiB (so freed buffers go back to the OS and the resident peak "
        "follows live memory). Seconds and peak RSS (growth of peak resident memory over the "
        "model and latents) are from a cold run; peak tensors is the most tensor memory live "
        "at once in a second run, from the allocation events of torch's profiler (RSS adds "
        "oneDNN's own buffers and the allocator's slack):\n\n"
        f"{memory_table}\n\n"
        f"{notes(args, speed, memory, sizes, frames, frame_counts)}\n\n"
        f"The whole run took {minutes:.1f} min. Load average (1 min) {load_before:.1f} at the "
        f"start and {load_after:.1f} at the end (CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()})."
    )
    if args.record:
        command = " ".join(["python benchmarks/bench_vae.py", *sys.argv[1:]])
        record("vae", "VAE encode and decode", body, command)
    else:
        print("\n" + body)


if __name__ == "__main__":
    main()
