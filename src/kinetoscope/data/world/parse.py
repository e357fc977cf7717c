"""Parse a caption of the world back into its attributes: the inverse of `captions`.

    parse_caption("a small red circle moves to the right across a black background")
    -> ParsedCaption(objects=[ParsedObject(color="red", shape="circle", size="small",
                                           motion="right", region=None)],
                     background="black", count=None)

It reads every level the world writes (short, medium, long, for videos and images) and the
benchmark's prompts, and it is forgiving of a user's wording: case, punctuation, extra words
and the order of clauses do not matter. An object is a mention of a color and a shape word
introduced by "a" / "an" / "one" (or at the start); "the red circle" refers back to one already
named. Each object's size comes from the words just before its color, and its motion and start
region from the words after it, up to the next object. What a caption does not say is None.
It is how the captioner and the prompt expander are scored, and how prompts are checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .captions import NUMBERS
from .palette import BACKGROUNDS, COLORS, REGIONS, SHAPES, SIZES

_REGIONS = sorted((name for row in REGIONS for name in row), key=len, reverse=True)
_DIAGONAL = re.compile(r"\b(up|down)(?:-| and to the )(left|right)\b")
_STRAIGHT = re.compile(r"\b(?:to the )?(right|left)\b|\b(up|down)(?:ward)?\b")
_FALL = re.compile(r"\b(fall|falls|falling|drop|drops|dropping)\b")
_STILL = re.compile(
    r"\b(still|rests|resting|at rest|not moving|does not move|motionless|stationary)\b"
)
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)?")
_SIZE_WORDS = {name: name for name in SIZES} | {"big": "large", "tiny": "small", "little": "small"}
_LEAD_INS = {*_SIZE_WORDS, "a", "an", "one", "and", "with"}


@dataclass
class ParsedObject:
    """One object of a caption; None where the caption does not say."""

    color: str
    shape: str
    size: str | None = None
    motion: str | None = None  # "still", "fall" or a direction of `DIRECTIONS`
    region: str | None = None  # start region (3x3 grid), as long captions give it


@dataclass
class ParsedCaption:
    """The attributes a caption states."""

    objects: list[ParsedObject] = field(default_factory=list)
    background: str | None = None
    count: int | None = None  # as a long caption states it ("a video of two objects")


def _motion(text: str) -> str | None:
    """The motion a clause states (the first one it names), or None."""
    found = []
    for pattern, name in ((_FALL, "fall"), (_STILL, "still")):
        match = pattern.search(text)
        if match:
            found.append((match.start(), name))
    match = _DIAGONAL.search(text)
    if match:
        found.append((match.start(), f"{match.group(1)}-{match.group(2)}"))
    for match in _STRAIGHT.finditer(text):
        if not any(start <= match.start() < start + 20 for start, _ in found if "-" in _):
            found.append((match.start(), match.group(1) or match.group(2)))
            break
    if "starts at rest" in text and any(name == "fall" for _, name in found):
        found = [item for item in found if item[1] != "still"]  # "starts at rest and falls"
    return min(found)[1] if found else None


def _region(text: str) -> str | None:
    for name in _REGIONS:
        if re.search(rf"\b(?:in|from) the {name}\b", text):
            return name
    return None


def names_new_object(before: list[str]) -> bool:
    """Whether a colour word following the words `before` names a new object ("a small red
    ...") rather than referring back to one already named ("bumps into the red ...")."""
    article = set(before[-2:])
    return "the" not in article or bool({"a", "an", "one"} & article)


def parse_caption(caption: str) -> ParsedCaption:
    """The objects (color, shape, size, motion, start region), background and stated count of
    a world caption or a user's prompt; see the module docstring."""
    text = " ".join(_WORD.findall(caption.lower().replace("grey", "gray")))
    words = text.split()
    parsed = ParsedCaption(background=_background(text), count=_count(text))
    mentions = []  # (word index of the color, color, shape)
    for i in range(len(words) - 1):
        if words[i] in COLORS and words[i + 1].rstrip("s") in SHAPES:
            if not names_new_object(words[:i]):
                continue  # "the red circle": a reference to an object already named
            mentions.append((i, words[i], words[i + 1].rstrip("s")))
    seen = set()
    for k, (i, color, shape) in enumerate(mentions):
        if (color, shape) in seen:
            continue
        seen.add((color, shape))
        end = mentions[k + 1][0] if k + 1 < len(mentions) else len(words)
        while end - 1 > i + 1 and words[end - 1] in _LEAD_INS:  # the next object's "and a small"
            end -= 1
        after = " ".join(words[i + 2 : end])
        after = after.split(" the background")[0]
        size = next((_SIZE_WORDS[w] for w in words[max(0, i - 2) : i] if w in _SIZE_WORDS), None)
        where = _region(after)
        # Regions and walls hold direction words ("in the top left", "the left wall").
        plain = re.sub(rf"\b(?:in|from) the {where}\b", " ", after) if where else after
        plain = re.sub(r"\bthe (?:left|right|top) wall\b", " ", plain)
        parsed.objects.append(ParsedObject(color, shape, size, _motion(plain), where))
    return parsed


def _background(text: str) -> str | None:
    names = "|".join(BACKGROUNDS)
    for pattern in (rf"\b({names}) background\b", rf"\bbackground is (?:a |an )?(?:flat |plain )?({names})\b"):  # fmt: skip
        match = re.search(pattern, text)
        if match:
            return match.group(1)
    return None


def _count(text: str) -> int | None:
    match = re.search(rf"\b({'|'.join(NUMBERS[1:])}) objects?\b", text)
    return NUMBERS.index(match.group(1)) if match else None


__all__ = ["ParsedCaption", "ParsedObject", "names_new_object", "parse_caption"]
