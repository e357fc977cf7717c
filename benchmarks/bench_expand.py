"""Prompt expansion on user-style prompts: kept attributes, valid captions, and adherence.

User-style prompts are written from random world scenes (seeded): each object by colour and
shape, its size, motion and the background each left out at random, in a user's phrasings
(synonyms such as "big" and "going", extra words such as "please make a video of", random case,
and a typo in one word of five letters or more in some). For each prompt the bundled expander
(`PromptExpander`) writes the expanded caption, and the benchmark counts

- kept: the expanded caption states every attribute the prompt was written with (parsed
  back, and compared with the scene's truth, so a typo the expander misreads counts as lost);
- valid: it parses as a complete world caption (every object with a size and a motion, and a
  background).

With `--adherence N`, a model (`--model`, default the bundled one) generates N scenes of the
standard suite's canvases three ways: from the benchmark's own template prompt, from a
user-style prompt that states every attribute, and from that prompt expanded; each video is
scored against its scene (world benchmark adherence).

    python benchmarks/bench_expand.py [--prompts 240] [--adherence 40] [--model DIR] [--record]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from kinetoscope.data.world import WorldConfig, parse_caption, sample_scene
from kinetoscope.text.expand import PromptExpander, stated_attributes
from record import markdown_table, record

_SIZE_WORDS = {"small": ("small", "tiny", "little"), "medium": ("medium",),
               "large": ("large", "big")}  # fmt: skip
_VERBS = ("moving", "going", "heading", "that moves", "sliding")
_EXTRA = ("", "", "please make a video of ", "a video of ", "show me ", "cinematic shot of ")
_DIRECTION = {"up-left": ("up-left", "up and to the left"), "up-right": ("up-right",),
              "down-left": ("down-left",), "down-right": ("down-right", "down and to the right"),
              "left": ("left", "to the left"), "right": ("right", "to the right"),
              "up": ("up", "upward"), "down": ("down", "downward")}  # fmt: skip


def _typo(word: str, rng: np.random.Generator) -> str:
    i = int(rng.integers(1, len(word) - 1))
    return word[:i] + word[i + 1 :]  # one letter dropped


def user_prompt(scene, rng: np.random.Generator, complete: bool = False) -> tuple[str, set]:
    """A user's wording of `scene` (with `complete`, every attribute stated), and the set of
    attributes it states, as `stated_attributes` counts them."""
    parts, stated = [], set()
    for obj in scene.objects:
        words = []
        stated.add((obj.color, obj.shape))
        if complete or rng.random() < 0.4:
            words.append(str(rng.choice(_SIZE_WORDS[obj.size])))
            stated.add((obj.color, obj.shape, "size", obj.size))
        color, shape = obj.color, obj.shape
        if rng.random() < 0.15:
            if len(shape) >= 6:
                shape = _typo(shape, rng)
            elif len(color) >= 5:
                color = _typo(color, rng)
        words += [color, shape]
        if scene.frames > 1 and (complete or rng.random() < 0.6):
            stated.add((obj.color, obj.shape, "motion", obj.motion))
            if obj.motion == "fall":
                words.append(str(rng.choice(("falling", "dropping"))))
            elif obj.motion == "still":
                words.append(str(rng.choice(("staying still", "not moving", "resting"))))
            else:
                words += [str(rng.choice(_VERBS)), str(rng.choice(_DIRECTION[obj.motion]))]
        parts.append("a " + " ".join(words))
    text = str(rng.choice(_EXTRA)) + " and ".join(parts)
    if complete or rng.random() < 0.4:
        stated.add(("background", scene.background))
        text += str(rng.choice((f" on a {scene.background} background",
                                f", {scene.background} background")))  # fmt: skip
    return (text.upper() if rng.random() < 0.05 else text), stated


def valid(caption: str) -> bool:
    parsed = parse_caption(caption)
    return (
        bool(parsed.objects)
        and parsed.background is not None
        and all(o.size is not None and o.motion is not None for o in parsed.objects)
    )


def adherence(model: str | None, count: int, steps: int) -> dict[str, float]:
    """Mean adherence of `count` standard-suite scenes from template, user and expanded prompts."""
    from kinetoscope.evaluate.world import score_video, suite
    from kinetoscope.pipeline import Pipeline

    pipe = Pipeline.load(model)
    expander = PromptExpander.load()
    rng = np.random.default_rng(1)
    scores: dict[str, list[float]] = {"template": [], "user": [], "expanded": []}
    for i, entry in enumerate(suite("standard")[:count]):
        user, _ = user_prompt(entry.spec, rng, complete=True)
        prompts = {"template": entry.prompt, "user": user,
                   "expanded": expander.expand(user, seed=i, video=entry.spec.frames > 1)}  # fmt: skip
        for kind, prompt in prompts.items():
            [video] = pipe.generate(prompt, width=entry.spec.width, height=entry.spec.height,
                                    frames=entry.spec.frames, steps=steps, seed=i,
                                    progress=False)  # fmt: skip
            scores[kind].append(score_video(video, entry.spec)["adherence"] or 0.0)
    return {kind: float(np.mean(values)) for kind, values in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=240)
    parser.add_argument("--adherence", type=int, default=0, help="scenes to generate (0: none)")
    parser.add_argument("--model", help="model folder for --adherence (default: bundled)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    expander = PromptExpander.load()
    rng = np.random.default_rng(0)
    config = WorldConfig(min_frames=9, max_frames=33)
    start = time.perf_counter()
    rows, kept, complete = [], 0, 0
    for i in range(args.prompts):
        prompt, truth = user_prompt(sample_scene(rng, config), rng)
        expanded = expander.expand(prompt, seed=i)
        # Against what the user meant, typos and all.
        kept += truth <= stated_attributes(parse_caption(expanded))
        complete += valid(expanded)
        if i < 5:
            rows.append([prompt, expanded])
    seconds = time.perf_counter() - start
    table = [["user-style prompts", args.prompts, ""],
             ["expanded prompts keep every attribute given", f"{kept / args.prompts:.1%}", "100%"],
             ["expanded prompts parse as complete world captions",
              f"{complete / args.prompts:.1%}", ">= 98%"],
             ["expansion time per prompt (ms)", 1000 * seconds / args.prompts, ""]]  # fmt: skip
    if args.adherence:
        scores = adherence(args.model, args.adherence, args.steps)
        table += [[f"adherence, {kind} prompts ({args.adherence} scenes)", value, ""]
                  for kind, value in scores.items()]  # fmt: skip
    body = markdown_table(["measure", "value", "floor"], table)
    body += "\n\nExamples:\n\n" + markdown_table(["user prompt", "expanded"], rows)
    print(body)
    if args.record:
        record("expand", "Prompt expansion", body,
               "python benchmarks/bench_expand.py " + " ".join(sys.argv[1:]))  # fmt: skip


if __name__ == "__main__":
    main()
