"""Caption embeddings computed once: an in-memory and on-disk cache around any text encoder.

    encoder = EmbeddingCache(load_text_encoder("minilm"), directory="cache/text")
    embeddings, mask = encoder.encode(captions)  # the same interface as the encoder it wraps

A training loop sees the same captions every epoch; the cache encodes each unique caption
once and keeps its embeddings trimmed to its true length `(S_i, D)`, so a cached batch pads to
exactly what a fresh `encode` of that batch gives (equal up to float rounding, which can differ
with the batch the caption was first encoded in).

Memory: the most recent `memory_items` captions (least recently used are dropped). Disk, when
`directory` is given: one safetensors file per caption,
`directory/<encoder hash>/<key[:2]>/<key>.safetensors`, where `key = sha256(identity, text)`
and `identity` changes whenever the encoder's outputs could (its weights, tokenizer, limit,
dtype). Files carry the caption and the encoder identity as metadata, are checked on read,
and are written atomically (a temporary file, then a rename), so several processes of one
training run can share a directory; an unreadable file is encoded again and rewritten.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from kinetoscope.text.base import TextEncoder, check_prompts

log = logging.getLogger("kinetoscope.text")


class EmbeddingCache(TextEncoder):
    """A `TextEncoder` that encodes each unique caption once through `encoder`.

    `stats` counts where each prompt came from: `"memory"`, `"disk"` or `"encoded"`.
    `memory_items=None` keeps every caption in memory; 0 keeps none (disk only).
    """

    def __init__(
        self,
        encoder: TextEncoder,
        directory: str | Path | None = None,
        *,
        memory_items: int | None = 4096,
    ):
        if memory_items is not None and memory_items < 0:
            raise ValueError(f"memory_items must be >= 0 or None (unbounded), got {memory_items}")
        self.encoder = encoder
        self.dim = encoder.dim
        self.max_length = encoder.max_length
        self.batch_size = encoder.batch_size
        self.directory = Path(directory) if directory is not None else None
        self.memory_items = memory_items
        self.memory: OrderedDict[str, Tensor] = OrderedDict()  # caption -> (S_i, D)
        self.stats = {"memory": 0, "disk": 0, "encoded": 0}

    @property
    def identity(self) -> str:
        return self.encoder.identity

    def _encode_batch(self, prompts: list[str]) -> list[Tensor]:
        return self.encoder.encode_each(prompts)

    def encode_each(self, prompts: Sequence[str]) -> list[Tensor]:
        """Per-prompt embeddings `(S_i, D)`: from memory, then disk, else encoded (once each)."""
        prompts = check_prompts(prompts)
        found: dict[str, Tensor] = {}
        missing: list[str] = []
        for prompt in dict.fromkeys(prompts):  # unique, in first-seen order
            embedding = self._from_memory(prompt)
            if embedding is None:
                embedding = self._from_disk(prompt)
            if embedding is None:
                missing.append(prompt)
            else:
                found[prompt] = embedding
        if missing:
            for prompt, embedding in zip(missing, self.encoder.encode_each(missing), strict=True):
                self.stats["encoded"] += 1
                self._to_disk(prompt, embedding)
                self._to_memory(prompt, embedding)
                found[prompt] = embedding
        return [found[p].clone() for p in prompts]

    # memory: an LRU of captions

    def _from_memory(self, prompt: str) -> Tensor | None:
        embedding = self.memory.get(prompt)
        if embedding is not None:
            self.memory.move_to_end(prompt)
            self.stats["memory"] += 1
        return embedding

    def _to_memory(self, prompt: str, embedding: Tensor) -> None:
        if self.memory_items == 0:
            return
        self.memory[prompt] = embedding
        self.memory.move_to_end(prompt)
        while self.memory_items is not None and len(self.memory) > self.memory_items:
            self.memory.popitem(last=False)

    # disk: one safetensors file per caption

    def path(self, prompt: str) -> Path:
        """Where `prompt`'s embeddings live on disk (needs a `directory`)."""
        assert self.directory is not None, "path() needs a cache directory"
        identity = self.encoder.identity
        folder = hashlib.sha256(identity.encode()).hexdigest()[:16]
        key = hashlib.sha256(f"{identity}\n{prompt}".encode()).hexdigest()
        return self.directory / folder / key[:2] / f"{key}.safetensors"

    def _from_disk(self, prompt: str) -> Tensor | None:
        if self.directory is None:
            return None
        path = self.path(prompt)
        if not path.exists():
            return None
        try:
            embedding, metadata = _read(path)
        except (OSError, SafetensorError, ValueError) as error:
            log.warning("unreadable cached embedding %s (%s): encoding again", path, error)
            return None
        if (
            embedding is None
            or metadata.get("text") != prompt
            or metadata.get("encoder") != self.encoder.identity
            or embedding.ndim != 2
            or embedding.shape[1] != self.dim
        ):
            log.warning("cached embedding %s does not match its caption: encoding again", path)
            return None
        self.stats["disk"] += 1
        self._to_memory(prompt, embedding)
        return embedding

    def _to_disk(self, prompt: str, embedding: Tensor) -> None:
        if self.directory is None:
            return
        path = self.path(prompt)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        metadata = {"text": prompt, "encoder": self.encoder.identity}
        save_file({"embeddings": embedding.contiguous()}, temporary, metadata=metadata)
        os.replace(temporary, path)  # atomic: readers see the old file or the whole new one


def _read(path: Path) -> tuple[Tensor | None, dict[str, str]]:
    """The `embeddings` tensor of a cache file (None if absent) and its metadata."""
    with safe_open(path, framework="pt") as handle:
        names = set(handle.keys())
        embedding = handle.get_tensor("embeddings") if "embeddings" in names else None
        return embedding, handle.metadata() or {}
