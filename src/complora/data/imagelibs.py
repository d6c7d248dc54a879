"""The libraries whose versions decide decoded and preprocessed pixels, read from the installed package
metadata: the workflow asks for them while it builds the DAG, where importing torch would slow every job."""

from __future__ import annotations

from importlib.metadata import version

IMAGE_LIBRARIES = ("pillow", "torchvision", "open_clip_torch")


def library_versions() -> dict[str, str]:
    return {name: version(name) for name in IMAGE_LIBRARIES}
