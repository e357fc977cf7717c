"""Train the video captioner on world clips and their ground-truth captions.

    train_captioner("world/manifest.jsonl", "runs/captioner", steps=3000)

The clips are encoded once by the frozen VAE into the latent cache the DiT trainer uses (share
it with `cache=`), and the captioner learns the `level` captions (the long ones by default:
every object's size, colour, shape, start region and motion, and the background) by next-word
cross-entropy. The last `holdout` clips are never trained on: at the end the exported model
captions them, the world's caption parser reads each caption back, and the report gives the
accuracy of every attribute against the clips' ground truth (`caption_accuracy`).

Run folder: `config.json` (the training config), `metrics.jsonl`, `checkpoint/` (model,
optimizer, step; `--resume` continues it), `captioner/` (the exported model, what
`kinetoscope caption --model` loads) and `report.json`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from kinetoscope.captioner import Captioner, CaptionerConfig, WordTokenizer
from kinetoscope.checkpoint import (
    load_tensors,
    optimizer_state_from_tensors,
    optimizer_state_to_tensors,
    save_json,
    save_model,
    save_tensors,
)
from kinetoscope.data.dataset import ClipDataset
from kinetoscope.data.world import parse_caption
from kinetoscope.nn import resolve_precision
from kinetoscope.train.latents import LatentCache
from kinetoscope.train.run import StopSignals, clear_run, prepare_run_folder
from kinetoscope.vae import BUNDLED, load_vae

RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint", "captioner", "report.json")
ATTRIBUTES = ("count", "color", "shape", "size", "motion", "background", "region")


@dataclass
class CaptionerTrainConfig:
    """How the captioner trains; each default with its reason."""

    steps: int = 3000
    batch: int = 32  # clips per step: latents are small (tens of tokens), so many fit
    lr: float = 1e-3
    warmup: int = 200
    level: str = "long"  # the most descriptive ground truth: start regions and motions too
    width: int = 256
    layers: int = 3  # encoder and decoder each
    max_area: int = 256 * 256  # as the DiT trainer's, so the two share the latent cache
    max_frames: int = 49
    holdout: int = 200  # last clips of the manifest, never trained on, for the report
    precision: str = "auto"
    seed: int = 0
    checkpoint_every: int = 500
    threads: int | None = None


def caption_accuracy(captions: list[str], truths: list[dict]) -> dict[str, float]:
    """Share of correct attributes of generated captions against ground-truth dicts (the
    world's truth files), objects matched in order: count, then per object colour, shape,
    size, motion and start region, and the background."""
    right = {name: [] for name in ATTRIBUTES}
    for caption, truth in zip(captions, truths, strict=True):
        parsed = parse_caption(caption)
        objects = truth["objects"]
        right["count"].append(len(parsed.objects) == len(objects))
        right["background"].append(parsed.background == truth["canvas"]["background"])
        video = truth["frames"] > 1
        for i, obj in enumerate(objects):
            found = parsed.objects[i] if i < len(parsed.objects) else None
            for name, key in (("color", "color"), ("shape", "shape"), ("size", "size"),
                              ("region", "region"), ("motion", "motion")):  # fmt: skip
                if name == "motion" and not video:
                    continue
                right[name].append(found is not None and getattr(found, key) == obj[key])
    return {
        name: float(np.mean(values)) if values else float("nan") for name, values in right.items()
    }


def _batch(model: Captioner, tokens: list[list[int]]) -> torch.Tensor:
    longest = min(max(map(len, tokens)), model.config.max_tokens)
    return torch.tensor([ids[:longest] + [0] * (longest - len(ids[:longest])) for ids in tokens])


def train_captioner(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    vae: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    **overrides,
) -> dict:
    """Train, export and report (see the module docstring); returns the report."""
    config = CaptionerTrainConfig(**overrides)
    out = prepare_run_folder(out, resume=resume, overwrite=overwrite, run_files=RUN_FILES)
    if config.threads:
        torch.set_num_threads(config.threads)
    vae_model = load_vae(BUNDLED["world"] if vae is None else vae).requires_grad_(False)
    dataset = ClipDataset(data, max_area=config.max_area, max_frames=config.max_frames,
                          caption_level=config.level, temporal_crop="start", seed=config.seed)  # fmt: skip
    precision = resolve_precision(config.precision, "cpu")
    latents = LatentCache(dataset, vae_model, Path(cache or out / "cache") / "latents", precision)
    cached = latents.fill(progress=progress)
    if len(cached) <= config.holdout:
        raise ValueError(f"{len(cached)} clips cached; need more than --holdout {config.holdout}")
    train_ids, held_ids = cached[: -config.holdout or None], cached[len(cached) - config.holdout :]
    captions = {i: dataset.caption(i) for i in cached}
    if any(not captions[i] for i in train_ids):
        raise ValueError(f"some clips of {data} have no {config.level!r} caption")

    checkpoint = out / "checkpoint"
    if resume:
        model = Captioner.load(checkpoint / "model").train()
    else:
        clear_run(out, RUN_FILES)
        save_json(out / "config.json", asdict(config))
        tokenizer = WordTokenizer.fit([captions[i] for i in train_ids])
        torch.manual_seed(config.seed)
        model = Captioner(CaptionerConfig(
            vocab=tokenizer.vocab, latent_channels=vae_model.config.latent_channels,
            width=config.width, encoder_layers=config.layers, decoder_layers=config.layers))  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    step = 0
    if resume:
        state = json.loads((checkpoint / "state.json").read_text())
        optimizer_state_from_tensors(optimizer, load_tensors(checkpoint / "optimizer.safetensors"), state["optimizer"])  # fmt: skip
        step = int(state["step"])
    rng = np.random.default_rng(config.seed + step)
    tokens = {i: model.tokenizer.encode(captions[i]) for i in train_ids}
    loss_fn = nn.CrossEntropyLoss(ignore_index=0)
    bf16 = precision == "bf16"

    def save() -> None:
        save_model(checkpoint / "model", model, model.config)
        tensors, rest = optimizer_state_to_tensors(optimizer)
        save_tensors(checkpoint / "optimizer.safetensors", tensors)
        save_json(checkpoint / "state.json", {"step": step, "optimizer": rest})

    bar = tqdm(total=config.steps, initial=step, desc="train-captioner", disable=not progress)
    with StopSignals() as signals, open(out / "metrics.jsonl", "a") as metrics:
        signals.arm()
        while step < config.steps and signals.signum is None:
            scale = min(1.0, (step + 1) / config.warmup)
            scale *= 0.5 * (1 + math.cos(math.pi * step / config.steps))  # cosine to zero
            for group in optimizer.param_groups:
                group["lr"] = config.lr * scale
            chosen = rng.choice(train_ids, size=min(config.batch, len(train_ids)), replace=False)
            batch = _batch(model, [tokens[int(i)] for i in chosen])  # (B, S)
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                logits = model([latents.load(int(i)) for i in chosen], batch[:, :-1])
            loss = loss_fn(logits.float().flatten(0, 1), batch[:, 1:].flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            metrics.write(
                json.dumps({"step": step, "loss": loss.item(), "time": time.time()}) + "\n"
            )
            if step % config.checkpoint_every == 0 or step == config.steps:
                save()
        if signals.signum is not None:
            save()
    bar.close()
    model.eval()
    report = {"step": step, "clips": len(train_ids), "heldout": len(held_ids)}
    if step >= config.steps:
        meta = {"data": str(data), "steps": step, "level": config.level,
                "vae": "world" if vae is None else str(vae)}  # fmt: skip
        model.save(out / "captioner", meta=meta)
        report.update(evaluate_captioner(model, latents, dataset, held_ids))
        save_json(out / "report.json", report)
    return report


def evaluate_captioner(model: Captioner, latents: LatentCache, dataset: ClipDataset,
                       indices: list[int], batch: int = 32) -> dict:  # fmt: skip
    """Accuracy per attribute and clips/s of `model` on clips `indices` with truth files."""
    truths = []
    for i in indices:
        record = dataset.records[i]
        if record.truth is None:
            raise ValueError(f"{record.path} has no ground truth; evaluate on world clips")
        truths.append(json.loads(Path(record.truth).read_text()))
    start = time.perf_counter()
    captions = []
    for k in range(0, len(indices), batch):
        captions += model.caption([latents.load(i) for i in indices[k : k + batch]])
    seconds = time.perf_counter() - start
    accuracy = caption_accuracy(captions, truths)
    return {"accuracy": accuracy, "clips_per_second": len(indices) / seconds,
            "examples": captions[:5]}  # fmt: skip


__all__ = ["ATTRIBUTES", "CaptionerTrainConfig", "caption_accuracy", "evaluate_captioner",
           "train_captioner"]  # fmt: skip
