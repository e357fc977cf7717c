"""The text-sensitivity probe: zero for a caption-blind model, positive for one that reads."""

import pytest
import torch

from kinetoscope.data.world import DIRECTIONS
from kinetoscope.diffusion import interpolate, training_timesteps, velocity_target
from kinetoscope.dit import DIT_PRESETS, DiT
from kinetoscope.evaluate.sensitivity import (
    ATTRIBUTES,
    altered_captions,
    build_probe,
    probe_scenes,
    text_sensitivity,
)
from kinetoscope.evaluate.world.suites import prompt
from kinetoscope.patches import pack
from kinetoscope.text.tiny import TinyTextConfig, TinyTextEncoder
from kinetoscope.vae import load_vae

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def probe(tiny_world):
    return build_probe(load_vae(tiny_world[1]), count=4)


def _text() -> TinyTextEncoder:
    return TinyTextEncoder(TinyTextConfig(max_length=192))  # whole two-object captions


def test_probe_scenes_are_fixed_and_every_caption_changes_one_attribute():
    scenes = probe_scenes(8)
    assert scenes == probe_scenes(8)
    for scene in scenes:
        assert scene.frames == 17 and scene.height == 64
        assert any(o.motion in DIRECTIONS for o in scene.objects)
        true = prompt(scene)
        altered = altered_captions(scene)
        assert list(altered) == list(ATTRIBUTES)
        assert all(text != true for text in altered.values())
    one = next(s for s in scenes if len(s.objects) == 1 and s.objects[0].motion == "left")
    assert "moving right" in altered_captions(one)["direction"]


def test_a_caption_blind_model_has_no_gap(probe):
    torch.manual_seed(0)
    dit = DiT(DIT_PRESETS["tiny"])
    for parameter in dit.parameters():  # a model whose output is far from zero ...
        torch.nn.init.normal_(parameter, std=0.1)
    for block in dit.blocks:  # ... with its text branch cut
        torch.nn.init.zeros_(block.cross_attn.proj.weight)
        torch.nn.init.zeros_(block.cross_attn.proj.bias)
    result = text_sensitivity(dit, _text(), probe)
    assert result["loss"] > 0.1
    for name in ATTRIBUTES:
        assert result[f"gap_{name}"] == pytest.approx(0.0, abs=1e-6)
    assert result["gap_direction_first"] == pytest.approx(0.0, abs=1e-6)


def test_a_model_that_reads_its_captions_has_a_positive_gap_for_every_attribute(probe):
    torch.manual_seed(0)
    dit, text = DiT(DIT_PRESETS["tiny"]), _text()
    optimizer = torch.optim.AdamW(dit.parameters(), lr=3e-3)
    emb, mask = text.encode(probe.captions)
    packed = pack(probe.latents, None, dit.config.patch)
    generator = torch.Generator().manual_seed(1)
    for _ in range(250):  # memorise the four clips under their true captions
        t = training_timesteps(packed.lengths, generator=generator)[packed.sample_index]
        noise = torch.randn(packed.tokens.shape, generator=generator)
        velocity = dit.forward_packed(interpolate(packed.tokens, noise, t), t, packed, emb, mask)
        loss = (velocity - velocity_target(packed.tokens, noise)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    result = text_sensitivity(dit, text, probe)
    gaps = {name: result[f"gap_{name}"] for name in ATTRIBUTES}
    assert all(gap > 0.01 for gap in gaps.values()), gaps
    # With the first frame given, the direction words still tell the later frames apart.
    assert result["gap_direction_first"] > 0.01 and result["win_direction_first"] > 0.5


def test_cli_eval_sensitivity_prints_every_attribute_and_writes_json(tmp_path, capsys):
    import json

    from kinetoscope.cli import main

    out = tmp_path / "probe.json"
    assert main(["eval", "sensitivity", "--clips", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ATTRIBUTES:
        assert name in printed
    assert "direction with the first frame given" in printed
    result = json.loads(out.read_text())
    assert result["loss"] > 0 and result["gap_background"] > 0  # the bundled model reads it
    assert main(["eval", "sensitivity", "--clips", "0"]) == 2
