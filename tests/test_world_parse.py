"""The caption parser reads back every caption the world writes, and a user's wording."""

import pytest

from kinetoscope.data.world import clip_seed, make_clip, region
from kinetoscope.data.world.parse import ParsedObject, parse_caption
from kinetoscope.data.world.scene import WORLD_MIXES
from kinetoscope.evaluate.world import suite


@pytest.mark.parametrize("mix", ["default", "world-model"])
def test_every_generated_caption_round_trips(mix):
    for index in range(150):
        clip = make_clip(clip_seed(11, index), WORLD_MIXES[mix])
        scene = clip.scene
        for level, text in clip.captions.items():
            parsed = parse_caption(text)
            assert [(o.color, o.shape) for o in parsed.objects] == [
                (o.color, o.shape) for o in scene.objects
            ], text
            for truth, found in zip(scene.objects, parsed.objects, strict=True):
                assert found.motion == (truth.motion if scene.frames > 1 else None), text
                if level != "short":
                    assert found.size == truth.size, text
                if level == "long":
                    assert found.region == region(truth.x, truth.y), text
            if level != "short" or "background" in text:
                assert parsed.background == scene.background, text


def test_benchmark_prompts_round_trip():
    for entry in suite("standard") + suite("heldout"):
        parsed = parse_caption(entry.prompt)
        motions = [o.motion if entry.spec.frames > 1 else None for o in entry.spec.objects]
        assert [(o.color, o.shape, o.size, o.motion) for o in parsed.objects] == [
            (o.color, o.shape, o.size, m) for o, m in zip(entry.spec.objects, motions, strict=True)
        ], entry.prompt
        assert parsed.background == entry.spec.background


@pytest.mark.parametrize(
    ("prompt", "objects", "background"),
    [
        ("A big red Circle going to the right, black background",
         [ParsedObject("red", "circle", "large", "right")], "black"),
        ("red circle moves right; blue square falls",
         [ParsedObject("red", "circle", None, "right"), ParsedObject("blue", "square", None, "fall")], None),
        ("Two objects: a small green triangle sliding upward and a white square that is not "
         "moving, on a grey background.",
         [ParsedObject("green", "triangle", "small", "up"), ParsedObject("white", "square", None, "still")], "gray"),
        ("an orange square heading down and to the left", [ParsedObject("orange", "square", None, "down-left")], None),
        ("a yellow circle", [ParsedObject("yellow", "circle")], None),
        ("the sky is blue", [], None),
    ],
)  # fmt: skip
def test_a_users_wording_is_read(prompt, objects, background):
    parsed = parse_caption(prompt)
    assert parsed.objects == objects and parsed.background == background


def test_references_and_counts_are_not_new_objects():
    text = ("A video of two objects. A small red circle starts in the top left, moves right "
            "and collides with the blue square. A large blue square rests in the center.")  # fmt: skip
    parsed = parse_caption(text)
    assert parsed.count == 2
    assert [(o.color, o.motion, o.region) for o in parsed.objects] == [
        ("red", "right", "top left"), ("blue", "still", "center")]  # fmt: skip
