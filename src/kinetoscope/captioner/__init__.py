"""The video captioner (latents or frames -> descriptive caption) and what uses it: `model` holds the
network and its word tokenizer; `kinetoscope train-captioner`, `caption` and `recaption` are
built on it."""

from kinetoscope.captioner.model import Captioner, CaptionerConfig, PixelFrames, WordTokenizer

__all__ = ["Captioner", "CaptionerConfig", "PixelFrames", "WordTokenizer"]
