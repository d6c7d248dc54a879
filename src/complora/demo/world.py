"""The demo world: scenes of one coloured, patterned shape on a background, and their captions.

Attribute values are the words captions and class names use. Two kinds of knowledge are left out of
pretraining on purpose: the fill pattern and five of the eleven colours (``RARE_COLORS``) are seldom
named in captions (see ``CAPTION_MENTION``), although every colour and pattern is drawn equally often.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLORS = {
    "red": (210, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 210),
    "yellow": (235, 210, 40),
    "purple": (140, 50, 170),
    "orange": (240, 130, 30),
    "pink": (250, 150, 190),
    "cyan": (60, 210, 230),
    "brown": (120, 75, 40),
    "gray": (135, 135, 135),
    "lime": (170, 235, 60),
}
# Colours that appear in pretraining images as often as the others but are rarely named in captions.
RARE_COLORS = ("pink", "cyan", "brown", "gray", "lime")
COMMON_COLORS = tuple(color for color in COLORS if color not in RARE_COLORS)
PATTERNS = ("plain", "striped", "dotted", "checkered", "zigzag")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "center")
BACKGROUNDS = ("grass", "sand", "water", "snow", "brick")

# Probability that a pretraining caption names each attribute.
CAPTION_MENTION = {
    "shape": 0.95,
    "color": 0.8,
    "background": 0.7,
    "size": 0.4,
    "position": 0.3,
    "pattern": 0.12,
}
RARE_COLOR_MENTION = 0.03
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
BACKGROUND_PHRASES = {
    "grass": "on grass",
    "sand": "on sand",
    "water": "on water",
    "snow": "in the snow",
    "brick": "in front of a brick wall",
}
CAPTION_OPENINGS = ("a photo of", "an image of", "a picture of", "a drawing of", "")


@dataclass(frozen=True)
class Scene:
    """One image's content. ``night`` renders it dark, low-contrast and noisy (shifted statistics)."""

    shape: str
    color: str
    pattern: str
    size: str
    position: str
    background: str
    night: bool = False


def sample_scene(rng: np.random.Generator, night: bool = False, **fixed: str) -> Scene:
    """A scene with uniformly drawn attributes, except those given in ``fixed``."""
    choices = {
        "shape": SHAPES,
        "color": tuple(COLORS),
        "pattern": PATTERNS,
        "size": SIZES,
        "position": POSITIONS,
        "background": BACKGROUNDS,
    }
    for name, value in fixed.items():
        if name not in choices or value not in choices[name]:
            raise ValueError(f"sample_scene: {name}={value!r} is not a scene attribute value; see {list(choices)}")
    values = {name: fixed.get(name) or str(rng.choice(options)) for name, options in choices.items()}
    return Scene(**values, night=night)


def _article(phrase: str) -> str:
    return "an" if phrase[0] in "aeiou" else "a"


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption naming a random subset of the scene's attributes (the shape almost always)."""
    mention = {**CAPTION_MENTION, **({"color": RARE_COLOR_MENTION} if scene.color in RARE_COLORS else {})}
    named = {name for name, share in mention.items() if rng.random() < share}
    words = [getattr(scene, name) for name in ("size", "color", "pattern") if name in named]
    noun = scene.shape if "shape" in named else "shape"
    phrase = " ".join([*words, noun])
    parts = [f"{_article(phrase)} {phrase}"]
    if "position" in named:
        parts.append(POSITION_PHRASES[scene.position])
    if "background" in named:
        parts.append(BACKGROUND_PHRASES[scene.background])
    if scene.night:
        parts.append("at night")
    opening = str(rng.choice(CAPTION_OPENINGS))
    return " ".join([opening, *parts]).strip() + "."
