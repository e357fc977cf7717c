"""`kinetoscope eval`: the VAE's reconstruction, the text-sensitivity probe, the world benchmark."""

from __future__ import annotations

import argparse
from pathlib import Path

from kinetoscope.cli.options import _DefaultsHelp


def _eval_vae(args: argparse.Namespace) -> int:
    from kinetoscope.evaluate.vae import evaluate_vae
    from kinetoscope.io import check_output_folder
    from kinetoscope.vae import load_vae

    if args.out:
        check_output_folder(args.out, "--out")
    report = evaluate_vae(
        load_vae(args.vae),
        args.data,
        limit=args.limit,
        out=args.out,
        max_area=args.max_area,
        max_frames=args.max_frames,
        progress=True,
    )
    print(
        f"{report['clips']} clips: PSNR {report['psnr']:.2f} dB, SSIM {report['ssim']:.4f}, "
        f"{report['latent_bits_per_pixel']:.3f} latent bits/pixel, "
        f"{report['frames_per_second']:.1f} frames/s, {report['skipped']} skipped"
    )
    for clip in sorted(report["per_clip"], key=lambda clip: clip["psnr"])[:3]:
        print(
            f"  worst: {clip['path']} ({clip['width']}x{clip['height']}x{clip['frames']}): "
            f"PSNR {clip['psnr']:.2f} dB, SSIM {clip['ssim']:.4f}"
        )
    if args.out:
        print(f"report (every clip's scores) and examples: {args.out}")
    return 0


def _eval_sensitivity(args: argparse.Namespace) -> int:
    import json

    from kinetoscope.evaluate.sensitivity import ATTRIBUTES, build_probe, text_sensitivity
    from kinetoscope.io import check_output_file
    from kinetoscope.pipeline import Pipeline

    if args.clips < 1:
        raise ValueError(f"--clips must be at least 1, got {args.clips}")
    if args.out:
        check_output_file(args.out, "--out")
    pipe = Pipeline.load(args.model, device=args.device, precision=args.precision)
    probe = build_probe(pipe.vae, args.clips, device=pipe.device)
    result = text_sensitivity(pipe.dit, pipe.text, probe, pipe.device, pipe.precision)
    times = "  ".join(f"t={t:<5g}" for t in probe.timesteps)
    print(f"flow loss with the true caption: {result['loss']:.4f} ({args.clips} clips)")
    print(f"{'attribute':<11} {'gap':>8} {'true wins':>9}   gap at {times}")
    for name in ATTRIBUTES:
        per_t = "  ".join(f"{result[f'gap_{name}_t{t:g}']:+7.2%}" for t in probe.timesteps)
        gap, win = result[f"gap_{name}"], result[f"win_{name}"]
        print(f"{name:<11} {gap:>+8.2%} {win:>9.0%}   {per_t}")
    gap, win = result["gap_direction_first"], result["win_direction_first"]
    print(f"direction with the first frame given: {gap:+.2%}, true wins {win:.0%}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"report: {args.out}")
    return 0


def _eval_world(args: argparse.Namespace) -> int:
    from kinetoscope.evaluate.world import (
        evaluate_folder,
        read_suite,
        render_suite,
        suite,
        write_suite,
    )
    from kinetoscope.io import check_output_file, check_output_folder

    for option, path in (("--out", args.out), ("--render-reference", args.render_reference)):
        if path:
            check_output_folder(path, option)
    if args.export_suite:
        check_output_file(args.export_suite, "--export-suite")
    if args.model:
        check_output_folder(args.videos or Path(args.out or "world-eval") / "videos", "--videos")
    if args.specs:
        suites = {Path(args.specs).stem: read_suite(args.specs)}
    else:
        suites = {name: suite(name) for name in args.suite.split(",")}
    if args.export_suite:
        path = write_suite(args.export_suite, [e for entries in suites.values() for e in entries])
        print(f"wrote {sum(map(len, suites.values()))} prompts and scene specs to {path}")
        return 0
    if args.render_reference:
        for entries in suites.values():
            render_suite(entries, args.render_reference)
        print(f"rendered the ground-truth videos of {', '.join(suites)} to {args.render_reference}")
        return 0
    if args.model:
        from kinetoscope.evaluate.world import generate_suite
        from kinetoscope.pipeline import Pipeline

        args.videos = args.videos or str(Path(args.out or "world-eval") / "videos")
        sizes = [(e.spec.width, e.spec.height, e.spec.frames) for s in suites.values() for e in s]
        pipe = Pipeline.load(args.model, sizes=sizes)
        for name, entries in suites.items():
            print(f"== generating suite {name} ({len(entries)} prompts) into {args.videos}")
            options = {"steps": args.steps, "guidance": args.guidance, "seed": args.seed}
            generate_suite(pipe, entries, args.videos, **options)
    if not args.videos:
        raise ValueError(
            "give --videos DIR or --model DIR (or --export-suite FILE / --render-reference DIR)"
        )
    out = Path(args.out) if args.out else Path(args.videos)
    means = {}
    for name, entries in suites.items():
        print(f"== suite {name} ({len(entries)} prompts)")
        report = evaluate_folder(
            args.videos, entries, out=out / f"world_{name}.json", worst=args.worst
        )
        means[name] = report["mean"]
    if len(means) > 1:  # the suites side by side: seen combinations against held-out ones
        names = list(means)
        print("\n| score | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
        for key in next(iter(means.values())):
            cells = ["-" if m[key] is None else f"{m[key]:.3f}" for m in means.values()]
            print(f"| {key} | " + " | ".join(cells) + " |")
    return 0


def add_eval_command(sub) -> argparse._SubParsersAction:
    """The `eval` subcommand and its own subcommands, added to the subparsers `sub`; returns
    the subparsers of `eval`."""
    evaluate = sub.add_parser(
        "eval",
        help="measure a VAE (reconstruction) or videos against the world benchmark",
        description="Evaluate a trained model on a manifest of clips.",
    )
    eval_sub = evaluate.add_subparsers(dest="what", metavar="WHAT", required=True)
    eval_vae = eval_sub.add_parser(
        "vae",
        help="reconstruction PSNR, SSIM, latent bits per pixel and throughput of a VAE",
        description="Reconstruct clips through a trained VAE; print PSNR, SSIM, latent bits "
        "per pixel and throughput, and with --out write report.json and example GIF/PNGs.",
        formatter_class=_DefaultsHelp,
    )
    eval_vae.add_argument(
        "--vae", required=True, help="VAE folder (model.safetensors + config.json) or 'world'"
    )
    eval_vae.add_argument("--data", required=True, help="manifest.jsonl of evaluation clips")
    eval_vae.add_argument("--limit", type=int, help="evaluate only the first N clips")
    eval_vae.add_argument("--out", help="folder for report.json and examples")
    eval_vae.add_argument("--max-area", type=int, default=256 * 256, help="clip area cap (px)")
    eval_vae.add_argument("--max-frames", type=int, default=17, help="frames per clip (1 + 4k)")
    eval_vae.set_defaults(run=_eval_vae)

    eval_sensitivity = eval_sub.add_parser(
        "sensitivity",
        help="text-sensitivity probe: how much a model's loss rises when one caption attribute "
        "changes",
        description="For fixed rendered world clips at fixed timesteps and noise, measure the "
        "flow loss with the true caption and with it changed in one attribute (direction, "
        "color, shape, size, background, count). A positive gap means the model reads that "
        "attribute; a caption-blind model scores zero. Needs no sampling: seconds.",
        formatter_class=_DefaultsHelp,
    )
    eval_sensitivity.add_argument(
        "--model", help="model folder or run folder (default: the bundled world model)"
    )
    eval_sensitivity.add_argument("--clips", type=int, default=32, help="probe clips")
    eval_sensitivity.add_argument(
        "--precision", choices=("auto", "bf16", "fp32"), default="fp32", help="compute precision"
    )
    eval_sensitivity.add_argument("--device", help="cpu, cuda or cuda:N (default: the GPU if any)")
    eval_sensitivity.add_argument("--out", help="write the full result (JSON) here")
    eval_sensitivity.set_defaults(run=_eval_sensitivity)

    eval_world = eval_sub.add_parser(
        "world",
        help="score videos against the world benchmark's prompts from pixels alone",
        description="Score a folder of videos, one per benchmark prompt and named "
        "<entry name>.mp4 (or any video extension), against their scene specs: prompt "
        "adherence, world consistency (permanence, stability, physics) and frame quality. "
        "Writes a JSON report and a contact sheet of the worst cases per suite and prints the "
        "suites side by side. --export-suite writes the prompts and specs for generating the "
        "videos elsewhere; --render-reference renders the ground truth (it scores near 1).",
        formatter_class=_DefaultsHelp,
    )
    eval_world.add_argument(
        "--videos",
        help="folder of videos named after the suite entries (with --model: where the generated "
        "videos go; default <--out or world-eval>/videos)",
    )
    eval_world.add_argument(
        "--model",
        help="generate every suite prompt at its spec's size with this model (a run folder "
        "written by `kinetoscope train`) into --videos, then score them",
    )
    eval_world.add_argument("--steps", type=int, default=30, help="sampler steps (with --model)")
    eval_world.add_argument(
        "--guidance", type=float, default=4.0, help="guidance scale (with --model)"
    )
    eval_world.add_argument(
        "--seed", type=int, default=0, help="seed of suite entry i is seed + i (with --model)"
    )
    eval_world.add_argument(
        "--suite", default="standard,heldout", help="comma-separated suites: standard, heldout"
    )
    eval_world.add_argument("--specs", help="a suite file (JSON Lines) instead of --suite")
    eval_world.add_argument("--out", help="folder for the reports (default: --videos)")
    eval_world.add_argument("--worst", type=int, default=8, help="videos in each contact sheet")
    eval_world.add_argument("--export-suite", help="write the prompts and specs here and exit")
    eval_world.add_argument(
        "--render-reference", help="render the suites' ground-truth videos to this folder and exit"
    )
    eval_world.set_defaults(run=_eval_world)
    return eval_sub


__all__ = ["add_eval_command"]
