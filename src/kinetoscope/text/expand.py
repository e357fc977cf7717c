"""Prompt expansion: a user's short prompt -> the detailed caption style the model trained on.

    expander = PromptExpander.load()                  # bundled, fitted on the world-model mix
    expander.expand("red circle going right", seed=0)
    -> "a large red circle glides to the right across a navy background"

Two expanders behind one method, `expand(prompt, seed) -> str`:

- `PromptExpander`, the offline default, is a model of the training captions: the frequency of
  every size (per shape), motion and background in a manifest's captions, counted by
  `PromptExpander.fit` (`kinetoscope train-expander`). It reads the user's prompt with the
  world's caption parser (after correcting near-miss spellings of the world's words), keeps
  every attribute the user gave, samples each missing one from those frequencies with the
  seed, and writes the result in the medium-caption style. A prompt that names no object is
  returned unchanged.
- `ChatExpander` asks any OpenAI-compatible chat endpoint (a local vLLM, llama.cpp or Ollama
  server) with a system prompt and examples drawn from training captions, with a timeout and
  retries, and checks that the answer kept the user's attributes.

Saved as a model folder: `config.json` (the vocabulary) and `model.safetensors` (the counts).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from kinetoscope.checkpoint import load_config, load_weights, save_model
from kinetoscope.data.world import BACKGROUNDS, COLORS, MOTIONS, SHAPES, SIZES, parse_caption
from kinetoscope.data.world.captions import medium_caption
from kinetoscope.data.world.parse import ParsedCaption
from kinetoscope.text.chat import ChatClient


class Expander(Protocol):
    """What `Pipeline.generate(expand=True)` calls."""

    def expand(self, prompt: str, seed: int = 0, video: bool = True) -> str: ...


BUNDLED_EXPANDER = Path(__file__).resolve().parents[1] / "weights" / "world-expander"
# Words a user might misspell; near misses of these are corrected before parsing.
_VOCABULARY = (*COLORS, *SHAPES, *SIZES, *BACKGROUNDS, "background", "moving", "falling",
               "still", "right", "left", "upward", "downward", "diagonally")  # fmt: skip


@dataclass(frozen=True)
class ExpanderConfig:
    """The vocabulary of the count tables (their axes), in order."""

    shapes: tuple[str, ...] = SHAPES
    sizes: tuple[str, ...] = tuple(SIZES)
    motions: tuple[str, ...] = MOTIONS
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)


class PromptExpander(torch.nn.Module):
    """Attribute frequencies of training captions, and the world's caption phrasing."""

    def __init__(self, config: ExpanderConfig = ExpanderConfig()) -> None:
        super().__init__()
        self.config = config
        # Counts, one added to every cell (so that nothing is impossible).
        self.register_buffer("size_counts", torch.ones(len(config.shapes), len(config.sizes)))
        self.register_buffer("motion_counts", torch.ones(len(config.motions)))
        self.register_buffer("background_counts", torch.ones(len(config.backgrounds)))

    # -- fitting and files -------------------------------------------------------------------

    @classmethod
    def fit(cls, captions: Iterable[str]) -> PromptExpander:
        """Count the attributes stated in `captions` (any caption level)."""
        model, config = cls(), ExpanderConfig()
        for caption in captions:
            parsed = parse_caption(caption)
            for obj in parsed.objects:
                if obj.size is not None:
                    model.size_counts[config.shapes.index(obj.shape), config.sizes.index(obj.size)] += 1  # fmt: skip
                if obj.motion is not None:
                    model.motion_counts[config.motions.index(obj.motion)] += 1
            if parsed.background is not None:
                model.background_counts[config.backgrounds.index(parsed.background)] += 1
        return model

    def save(self, folder: str | os.PathLike, meta: dict | None = None) -> Path:
        return save_model(folder, self, self.config, meta=meta or {})

    @classmethod
    def load(cls, folder: str | os.PathLike | None = None) -> PromptExpander:
        """The expander in `folder` (default: the bundled one)."""
        folder = BUNDLED_EXPANDER if folder is None else Path(folder)
        model = cls(load_config(folder, ExpanderConfig))
        load_weights(folder, model)
        return model

    # -- expanding ---------------------------------------------------------------------------

    def expand(self, prompt: str, seed: int = 0, video: bool = True) -> str:
        """`prompt` in the training captions' medium style, every attribute it states kept and
        each missing one sampled (with `seed`) from the training frequencies."""
        parsed = parse_caption(correct_spelling(prompt))
        if not parsed.objects:
            return prompt
        rng = np.random.default_rng(seed)
        config = self.config
        objects = []
        for obj in parsed.objects:
            size = obj.size or _draw(rng, config.sizes, self.size_counts[config.shapes.index(obj.shape)])  # fmt: skip
            motion = obj.motion or _draw(rng, config.motions, self.motion_counts)
            objects.append((obj.color, obj.shape, size, motion if video else "still"))
        background = parsed.background or _draw(rng, config.backgrounds, self.background_counts)
        return medium_caption(objects, background, rng, video=video)


def _draw(rng: np.random.Generator, names: tuple[str, ...], counts: torch.Tensor) -> str:
    weights = counts.double().numpy()
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def correct_spelling(prompt: str) -> str:
    """`prompt` with near misses of the world's words ("cirle", "yelow") corrected; words
    under 5 letters are left alone ("read" is not "red")."""
    out = []
    for word in prompt.split():
        core = word.strip(".,;:!?").lower()
        if len(core) >= 5 and core not in _VOCABULARY:
            match = difflib.get_close_matches(core, _VOCABULARY, n=1, cutoff=0.8)
            if match:
                word = word.lower().replace(core, match[0])
        out.append(word)
    return " ".join(out)


def kept_attributes(prompt: str, expanded: str) -> bool:
    """Whether `expanded` states every object attribute and the background `prompt` states."""
    given, got = parse_caption(correct_spelling(prompt)), parse_caption(expanded)
    return stated_attributes(given) <= stated_attributes(got)


def stated_attributes(parsed: ParsedCaption) -> set[tuple]:
    """What a parsed caption states: (color, shape) per object, (color, shape, 'size' or
    'motion', value) where given, and ('background', name)."""
    found = {("background", parsed.background)} if parsed.background else set()
    for obj in parsed.objects:
        found.add((obj.color, obj.shape))
        found |= {(obj.color, obj.shape, name, value) for name, value in
                  (("size", obj.size), ("motion", obj.motion)) if value is not None}  # fmt: skip
    return found


class ChatExpander:
    """Prompt expansion by an OpenAI-compatible chat endpoint (`ChatClient`)."""

    def __init__(
        self, url: str, model: str, examples: list[tuple[str, str]] | None = None,
        timeout: float = 30.0, retries: int = 2,
    ) -> None:  # fmt: skip
        self.chat = ChatClient(url, model, timeout, retries, what="expansion endpoint")
        shots = examples or [
            ("a red circle moving right", "a small red circle moves to the right across a black background"),
            ("blue square falling, gray", "a large blue square falls on a gray background"),
        ]  # fmt: skip
        self.messages = [{"role": "system", "content": (
            "Rewrite the user's video prompt as one caption in exactly this style. Keep every "
            "color, shape, size, motion and background the user gives; fill in what is "
            "missing. Sizes: small, medium, large. Colors: " + ", ".join(COLORS) + ". Shapes: "
            + ", ".join(SHAPES) + ". Backgrounds: " + ", ".join(BACKGROUNDS) + ". Answer with "
            "the caption only.")}]  # fmt: skip
        for short, long in shots:
            self.messages += [{"role": "user", "content": short},
                              {"role": "assistant", "content": long}]  # fmt: skip

    def expand(self, prompt: str, seed: int = 0, video: bool = True) -> str:
        """The endpoint's rewrite of `prompt`; ValueError if it is unreachable, answers
        something that is not a chat completion, or drops an attribute the user gave."""
        messages = [*self.messages, {"role": "user", "content": prompt}]
        text = self.chat.complete(messages, seed=seed, temperature=0.7)
        if not kept_attributes(prompt, text):
            raise ValueError(
                f"{self.chat.url} rewrote {prompt!r} as {text!r}, which drops what the prompt "
                "said; use the offline expander or another model"
            )
        return text


__all__ = ["BUNDLED_EXPANDER", "ChatExpander", "Expander", "ExpanderConfig", "PromptExpander",
           "correct_spelling", "kept_attributes", "stated_attributes"]  # fmt: skip
