"""Every caption level is true of its clip: parse the claims back and check the ground truth.

The parser below is written from the documented vocabulary (palette names, direction words,
"bounces off the left wall", "collides with the red circle", ...), not from the caption
templates, so a caption that says something false or unparseable fails here.
"""

import re

import numpy as np
import pytest

from kinetoscope.data.world import (
    BACKGROUNDS,
    COLORS,
    REGIONS,
    SHAPES,
    SIZES,
    WorldConfig,
    captions,
    ground_truth,
    sample_scene,
    simulate,
)

COLOR = "|".join(COLORS)
SHAPE = "|".join(SHAPES)
SIZE = "|".join(SIZES)
BACKGROUND = "|".join(BACKGROUNDS)
REGION = "|".join(sorted((r for row in REGIONS for r in row), key=len, reverse=True))
NUMBER = {"one": 1, "two": 2, "three": 3, "four": 4}

DIRECTION = (
    r"(?:diagonally )?(?:(?:up|down) and to the (?:left|right)|(?:up|down)-(?:left|right)"
    r"|to the (?:left|right)|upward|downward|up|down|left|right)"
)
MOVE = re.compile(
    rf"\b(?:moves|travels|glides|slides|moving|going|heading|sliding|drifting) ({DIRECTION})"
    r"(?![\w-])"
)
STILL = re.compile(
    r"\b(?:stays still|rests|does not move|sits still|staying still|not moving|resting"
    r"|sitting still)\b"
)
FALL = re.compile(r"\b(?:falls|drops|falling|dropping)\b")
FLOOR_BOUNCE = re.compile(r"\bbounc\w* (?:on|off) the floor\b")
WALL = re.compile(r"\bthe (left|right|top) wall\b|\bthe (floor)\b")
PARTNER = re.compile(rf"\bthe ({COLOR}) ({SHAPE})\b")
ANY_MOTION = re.compile(
    r"\b(?:moves|travels|glides|slides|falls|drops|bounc\w*|still|rests|move|collides|hit"
    r"|bumps|starts)\b"
)


def _direction(words: str) -> str:
    """Normalise direction words to a palette direction name."""
    words = words.removeprefix("diagonally ").removeprefix("to the ")
    words = {"upward": "up", "downward": "down"}.get(words, words)
    match = re.fullmatch(r"(up|down) and to the (left|right)", words)
    return f"{match[1]}-{match[2]}" if match else words


def _motion(text: str) -> str:
    """The one motion claimed in a piece of text; fails if there are none or several."""
    claims = [_direction(m) for m in MOVE.findall(text)]
    claims += ["still"] * len(STILL.findall(text)) + ["fall"] * len(FALL.findall(text))
    assert len(claims) == 1, f"expected exactly one motion in {text!r}, found {claims}"
    return claims[0]


def _objects_in(text: str, with_size: bool) -> list[tuple]:
    pattern = rf"\ba ({SIZE}) ({COLOR}) ({SHAPE})\b" if with_size else rf"\ba ({COLOR}) ({SHAPE})\b"
    return re.findall(pattern, text, flags=re.I)


def _background(text: str) -> str | None:
    found = re.findall(
        rf"\b({BACKGROUND}) background\b|background is (?:a flat |plain )?({BACKGROUND})\b", text
    )
    names = {a or b for a, b in found}
    assert len(names) <= 1, text
    return names.pop() if names else None


def _events(truth: dict) -> list[tuple[set, set]]:
    """Per object: the walls it bounced off and the objects it collided with."""
    found = [(set(), set()) for _ in truth["objects"]]
    for e in truth["events"]:
        if e["type"] == "bounce":
            found[e["object"]][0].add(e["wall"])
        else:
            i, j = e["objects"]
            found[i][1].add(j)
            found[j][1].add(i)
    return found


def check_short(text: str, truth: dict) -> None:
    objects = [(o["color"], o["shape"]) for o in truth["objects"]]
    assert _objects_in(text, with_size=False) == objects, text
    assert _background(text) in (None, truth["canvas"]["background"]), text
    if truth["frames"] == 1:
        assert not ANY_MOTION.search(text), text
        return
    # A video's short caption names each object's motion, in the clause after its name.
    starts = [m.start() for m in re.finditer(rf"\ba (?:{COLOR}) (?:{SHAPE})\b", text)]
    for i, (start, end) in enumerate(zip(starts, [*starts[1:], len(text)], strict=True)):
        assert _motion(text[start:end]) == truth["objects"][i]["motion"], text


def check_medium(text: str, truth: dict) -> None:
    objects = truth["objects"]
    assert _objects_in(text, with_size=True) == [
        (o["size"], o["color"], o["shape"]) for o in objects
    ]
    assert _background(text) == truth["canvas"]["background"], text
    if truth["frames"] == 1:
        assert not ANY_MOTION.search(text), f"an image caption claims motion: {text!r}"
        return
    # Each object's clause runs from its name to the next object's name.
    starts = [m.start() for m in re.finditer(rf"\ba (?:{SIZE}) (?:{COLOR}) (?:{SHAPE})\b", text)]
    events = _events(truth)
    for i, (start, end) in enumerate(zip(starts, [*starts[1:], len(text)], strict=True)):
        clause = text[start:end]
        assert _motion(clause) == objects[i]["motion"], clause
        assert bool(FLOOR_BOUNCE.search(clause)) == (
            objects[i]["motion"] == "fall" and "floor" in events[i][0]
        ), clause


def check_long(text: str, truth: dict) -> None:
    objects = truth["objects"]
    sentences = [s.strip() for s in re.split(r"(?<=\.)\s+", text) if s.strip()]
    assert all(s.endswith(".") for s in sentences), text
    count = [NUMBER[m] for m in re.findall(r"\b(one|two|three|four) objects?\b", text)]
    assert count in ([], [len(objects)]), text
    assert _background(text) == truth["canvas"]["background"], text
    described = [s for s in sentences if re.match(rf"A ({SIZE}) ({COLOR}) ({SHAPE})\b", s)]
    assert len(described) == len(objects), text
    events = _events(truth)
    for obj, sentence, (walls, partners) in zip(objects, described, events, strict=True):
        name = re.match(rf"A ({SIZE}) ({COLOR}) ({SHAPE})\b", sentence).groups()
        assert name == (obj["size"], obj["color"], obj["shape"]), sentence
        regions = re.findall(rf"\b(?:in|from) the ({REGION})\b", sentence)
        assert regions == [obj["region"]], sentence
        if truth["frames"] == 1:
            assert not ANY_MOTION.search(sentence), f"an image caption claims motion: {sentence!r}"
            continue
        assert _motion(sentence) == obj["motion"], sentence
        claimed_walls = {a or b for a, b in WALL.findall(sentence)}
        assert claimed_walls == walls, sentence
        claimed = set(PARTNER.findall(sentence))
        assert claimed == {(objects[j]["color"], objects[j]["shape"]) for j in partners}, sentence


def _clips(count: int, seed: int):
    rng = np.random.default_rng(seed)
    config = WorldConfig(exclude=())
    for _ in range(count):
        scene = sample_scene(rng, config)
        traj = simulate(scene)
        text = captions(scene, traj, rng)
        # Truth without rendering: visibility is not part of any caption.
        visibility = np.ones((len(scene.objects), scene.frames))
        yield text, ground_truth(scene, traj, visibility, text)


def test_every_caption_level_agrees_with_the_ground_truth():
    images = bounces = collisions = 0
    for text, truth in _clips(200, seed=0):
        check_short(text["short"], truth)
        check_medium(text["medium"], truth)
        check_long(text["long"], truth)
        images += truth["frames"] == 1
        bounces += any(e["type"] == "bounce" for e in truth["events"])
        collisions += any(e["type"] == "collision" for e in truth["events"])
    # The sample covers images, bounces and collisions.
    assert images >= 5 and bounces >= 50 and collisions >= 10


def test_the_checker_catches_false_captions():
    text, truth = next((t, tr) for t, tr in _clips(50, seed=1) if tr["frames"] > 1 and tr["events"])
    obj = truth["objects"][0]
    other = next(
        c for c in COLORS if c != obj["color"] and COLORS[c] != tuple(truth["canvas"]["rgb"])
    )
    lying = text["medium"].replace(f"{obj['color']} {obj['shape']}", f"{other} {obj['shape']}", 1)
    with pytest.raises(AssertionError):
        check_medium(lying, truth)
    without_events = dict(truth, events=[])
    with pytest.raises(AssertionError):
        check_long(text["long"], without_events)


def test_phrasings_vary_and_use_the_rng():
    rng = np.random.default_rng(3)
    scene = sample_scene(rng, WorldConfig(min_frames=17, min_objects=2))
    traj = simulate(scene)
    texts = [captions(scene, traj, np.random.default_rng(seed)) for seed in range(30)]
    for level in ("short", "medium", "long"):
        assert len({t[level] for t in texts}) >= 3, level
    again = captions(scene, traj, np.random.default_rng(0))
    assert again == texts[0]


def test_medium_caption_of_one_moving_object_reads_naturally():
    from kinetoscope.data.world import ObjectSpec, SceneSpec

    scene = SceneSpec(
        64, 64, 9, 8, "black", (ObjectSpec("red", "circle", "small", "right", 0.3, 0.5, 0.5),)
    )
    texts = {
        captions(scene, simulate(scene), np.random.default_rng(s))["medium"] for s in range(40)
    }
    assert "a small red circle moves right across a black background" in texts


def test_in_reading_order_sorts_object_sentences_by_where_they_start():
    from kinetoscope.data.world import parse_caption
    from kinetoscope.data.world.captions import in_reading_order

    reordered = 0
    for text, truth in _clips(200, seed=2):
        if len(truth["objects"]) < 2:
            continue
        ordered = in_reading_order(text["long"], truth["objects"])
        sentences = re.split(r"(?<=\.) ", text["long"])
        assert sorted(re.split(r"(?<=\.) ", ordered)) == sorted(sentences)  # the same sentences
        rows = [next(r for r, names in enumerate(REGIONS) if o.region in names)
                for o in parse_caption(ordered).objects]  # fmt: skip
        assert rows == sorted(rows), ordered
        reordered += ordered != text["long"]
        for level in ("short", "medium"):  # not one sentence per object: left as it is
            assert in_reading_order(text[level], truth["objects"]) == text[level]
    assert reordered >= 10


def test_alt_text_names_the_objects_and_nothing_of_their_size_motion_or_place():
    from kinetoscope.data.world import parse_caption
    from kinetoscope.data.world.captions import alt_text

    for _, truth in _clips(60, seed=3):
        alt = alt_text(truth["objects"], truth["canvas"]["background"], np.random.default_rng(0))
        parsed = parse_caption(alt)
        assert [(o.color, o.shape) for o in parsed.objects] == [
            (o["color"], o["shape"]) for o in truth["objects"]
        ], alt
        assert all(o.size is None and o.motion is None and o.region is None
                   for o in parsed.objects), alt  # fmt: skip
        assert parsed.background in (None, truth["canvas"]["background"]), alt
