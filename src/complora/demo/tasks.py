"""The demo benchmark's downstream tasks: each classifies one scene attribute.

``coverage`` says how well the pretraining captions teach a task: ``captioned`` tasks name their
attribute in most captions (good zero-shot expected); ``rare`` names it in few; ``shifted`` keeps
well-captioned labels but renders images with statistics pretraining never shows.
"""

from __future__ import annotations

from dataclasses import dataclass

from .world import BACKGROUND_PHRASES, COMMON_COLORS, PATTERNS, RARE_COLORS, SHAPES


@dataclass(frozen=True)
class DemoTask:
    """A classification task over the demo world: label attribute, its values and their class names."""

    name: str
    attribute: str
    values: tuple[str, ...]
    classnames: tuple[str, ...]
    coverage: str
    night: bool = False


TASKS: dict[str, DemoTask] = {
    task.name: task
    for task in (
        DemoTask("demo_shapes", "shape", SHAPES, SHAPES, "captioned"),
        DemoTask("demo_colors", "color", COMMON_COLORS, tuple(f"{c} shape" for c in COMMON_COLORS), "captioned"),
        DemoTask("demo_rare_colors", "color", RARE_COLORS, tuple(f"{c} shape" for c in RARE_COLORS), "rare"),
        DemoTask(
            "demo_scenes",
            "background",
            tuple(BACKGROUND_PHRASES),
            tuple(f"shape {phrase}" for phrase in BACKGROUND_PHRASES.values()),
            "captioned",
        ),
        DemoTask("demo_patterns", "pattern", PATTERNS, tuple(f"{p} shape" for p in PATTERNS), "rare"),
        DemoTask("demo_night_shapes", "shape", SHAPES, SHAPES, "shifted", night=True),
    )
}
