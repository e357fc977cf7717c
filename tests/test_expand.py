"""Prompt expansion: the offline expander, the chat-endpoint client, the pipeline and the CLI."""

import time

import pytest
import torch

from kinetoscope.cli import main
from kinetoscope.data.world import clip_seed, make_clip, parse_caption
from kinetoscope.data.world.scene import WORLD_MIXES
from kinetoscope.dit import DIT_PRESETS, DiT
from kinetoscope.pipeline import Pipeline
from kinetoscope.text import TinyTextEncoder
from kinetoscope.text.expand import (
    ChatExpander,
    PromptExpander,
    correct_spelling,
    kept_attributes,
)
from kinetoscope.vae import VAE_PRESETS, VideoVAE

pytestmark = pytest.mark.filterwarnings("ignore:prompts longer than")


@pytest.fixture(scope="module")
def expander() -> PromptExpander:
    return PromptExpander.load()  # the bundled one


def test_fit_counts_the_attributes_of_captions():
    fitted = PromptExpander.fit(["a small red circle moves right on a black background"] * 9)
    config = fitted.config
    assert fitted.size_counts[config.shapes.index("circle"), config.sizes.index("small")] == 10
    assert fitted.motion_counts[config.motions.index("right")] == 10
    assert fitted.background_counts[config.backgrounds.index("black")] == 10
    assert fitted.motion_counts.sum() == 9 + len(config.motions)  # one added to every cell
    # What the captions made common is what missing attributes become.
    expanded = fitted.expand("a red circle", seed=0)
    assert expanded == "a small red circle moves right across a black background" or (
        parse_caption(expanded).objects[0].size == "small")  # fmt: skip


def test_expansion_keeps_what_the_user_gave_and_fills_the_rest(expander):
    for index in range(120):
        clip = make_clip(clip_seed(3, index), WORLD_MIXES["world-model"])
        prompt = clip.captions["short"]
        expanded = expander.expand(prompt, seed=index, video=clip.scene.frames > 1)
        assert kept_attributes(prompt, expanded), (prompt, expanded)
        parsed = parse_caption(expanded)
        assert len(parsed.objects) == len(clip.scene.objects) and parsed.background
        video = clip.scene.frames > 1
        assert all(o.size and (o.motion or not video) for o in parsed.objects), expanded


def test_expansion_is_seeded(expander):
    prompt = "a red circle"
    assert expander.expand(prompt, seed=1) == expander.expand(prompt, seed=1)
    assert len({expander.expand(prompt, seed=s) for s in range(12)}) > 3
    assert expander.expand("the sky at night", seed=0) == "the sky at night"  # nothing to expand


def test_near_misses_of_the_worlds_words_are_corrected():
    assert correct_spelling("a big blue squre going rigth") == "a big blue square going right"
    assert correct_spelling("read the red book") == "read the red book"  # short words kept


def test_the_pipeline_expands_prompts_when_asked(expander):
    torch.manual_seed(0)
    pipe = Pipeline(DiT(DIT_PRESETS["tiny"]), VideoVAE(VAE_PRESETS["tiny"]), TinyTextEncoder(),
                    precision="fp32")  # fmt: skip
    pipe.generate("a red circle", width=32, height=32, frames=5, steps=1, seed=4, progress=False,
                  expand=True)  # fmt: skip
    assert pipe.expanded == [expander.expand("a red circle", seed=4)]


# ---------------------------------------------------------------------------------------------
# A chat endpoint, served in the test (conftest's `chat_server`)


def test_chat_expander_speaks_the_protocol(chat_server):
    chat_server.answer = "a small red circle moves right across a black background"
    chat = ChatExpander(chat_server.url, "world-writer")
    assert chat.expand("red circle going right", seed=3) == chat_server.answer
    path, body = chat_server.seen[0]
    assert path == "/v1/chat/completions" and body["model"] == "world-writer"
    assert body["seed"] == 3 and body["messages"][0]["role"] == "system"
    assert body["messages"][-1] == {"role": "user", "content": "red circle going right"}


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"<html>not json</html>", "did not answer JSON"),
        (b'{"error": "no such model"}', "not a chat completion"),
        ("", "empty message"),
        ("a large blue square falls", "drops what the prompt said"),
    ],
)
def test_chat_expander_refuses_garbage_answers(chat_server, answer, message):
    chat_server.answer = answer
    with pytest.raises(ValueError, match=message):
        ChatExpander(chat_server.url, "m").expand("a red circle moving right")


def test_a_refused_request_is_not_retried_and_names_the_model(chat_server):
    chat_server.status, chat_server.answer = 404, b'{"error": "model not found"}'
    with pytest.raises(ValueError, match=r"refused the request \(HTTP 404.*'no-such-model'"):
        ChatExpander(chat_server.url, "no-such-model", retries=2).expand("a red circle")
    assert len(chat_server.seen) == 1  # a client error would not change on retry


def test_chat_expander_times_out_and_names_a_server_that_is_down(chat_server):
    chat_server.answer, chat_server.delay = "a small red circle moves right", 2.0
    start = time.monotonic()
    with pytest.raises(ValueError, match="did not answer after 2 tries"):
        ChatExpander(chat_server.url, "m", timeout=0.3, retries=1).expand("a red circle")
    assert time.monotonic() - start < 5
    down = chat_server.down_url()
    with pytest.raises(ValueError, match=f"{down}.*check that the server runs"):
        ChatExpander(down, "m", timeout=1, retries=0).expand("a red circle")


# ---------------------------------------------------------------------------------------------
# The CLI


def test_train_expander_writes_a_model_and_keeps_what_exists(tiny_world, tmp_path, capsys):
    manifest, _ = tiny_world
    out = tmp_path / "expander"
    assert main(["train-expander", "--data", str(manifest), "--out", str(out)]) == 0
    assert "6 clips" in capsys.readouterr().out
    assert PromptExpander.load(out).motion_counts.sum() > 10
    assert main(["train-expander", "--data", str(manifest), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_generate_expand_prints_the_expanded_prompt(tiny_world, tmp_path, capsys):
    from kinetoscope.train.dit import train_dit

    manifest, vae = tiny_world
    run = tmp_path / "run"
    train_dit(manifest, run, vae=vae, preset="tiny", steps=1, max_frames=9, warmup=1,
              preview_every=0, progress=False)  # fmt: skip
    argv = ["generate", "a red circle", "--model", str(run), "--steps", "1", "--frames", "5",
            "--width", "32", "--height", "32", "--out", str(tmp_path / "x.mp4")]  # fmt: skip
    assert main([*argv, "--expand"]) == 0
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if line.startswith("expanded prompt: "))
    assert kept_attributes("a red circle", line.removeprefix("expanded prompt: "))
    assert main([*argv, "--overwrite", "--expand-endpoint", "http://127.0.0.1:9/v1"]) == 2
    assert "--expand-model" in capsys.readouterr().err
