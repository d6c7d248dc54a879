"""Rendering scenes to RGB images with numpy: deterministic given the scene and the random generator."""

from __future__ import annotations

import numpy as np

from .world import COLORS, Scene

SUPERSAMPLE = 2  # render at 2x and average down, for anti-aliased edges
SIZE_RADIUS = {"small": 0.2, "large": 0.34}  # shape radius as a share of the image side
POSITION_CENTER = {
    "left": (0.5, 0.3),
    "right": (0.5, 0.7),
    "top": (0.3, 0.5),
    "bottom": (0.7, 0.5),
    "center": (0.5, 0.5),
}  # (row, column) as shares of the image side


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-mask of a shape in coordinates where the shape spans roughly [-1, 1]^2."""
    if shape == "circle":
        return u**2 + v**2 <= 1.0
    if shape == "square":
        return np.maximum(abs(u), abs(v)) <= 0.85
    if shape == "diamond":
        return abs(u) + abs(v) <= 1.0
    if shape == "triangle":
        return (v <= 0.75) & (v >= 2.0 * abs(u) - 1.0)
    if shape == "cross":
        return ((abs(u) <= 0.32) & (abs(v) <= 1.0)) | ((abs(v) <= 0.32) & (abs(u) <= 1.0))
    if shape == "star":
        angle = np.arctan2(v, u) + np.pi / 2
        return np.hypot(u, v) <= 0.55 + 0.45 * np.cos(5 * angle) ** 8
    raise ValueError(f"unknown shape {shape!r}")


def _pattern_mask(pattern: str, rows: np.ndarray, cols: np.ndarray, period: float) -> np.ndarray:
    """Where the pattern darkens the shape's fill; ``period`` in pixels."""
    if pattern == "plain":
        return np.zeros_like(rows, dtype=bool)
    if pattern == "striped":
        return ((rows + cols) // period) % 2 == 0
    if pattern == "checkered":
        return ((rows // period) + (cols // period)) % 2 == 0
    if pattern == "dotted":
        return (rows % period - period / 2) ** 2 + (cols % period - period / 2) ** 2 <= (period / 3.2) ** 2
    if pattern == "zigzag":
        return ((rows + abs(cols % (2 * period) - period)) // period) % 2 == 0
    raise ValueError(f"unknown pattern {pattern!r}")


def _background(name: str, rows: np.ndarray, cols: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(0.0, 1.0, rows.shape)
    if name == "grass":
        streaks = np.sin(cols * 2.1 + rng.uniform(0, 6)) * 0.5 + noise * 0.5
        return np.stack([60 + 15 * streaks, 140 + 30 * streaks, 50 + 10 * streaks], -1)
    if name == "sand":
        return np.stack([220 + 12 * noise, 195 + 12 * noise, 140 + 10 * noise], -1)
    if name == "water":
        waves = np.sin(rows * 12.0 / side * np.pi + np.sin(cols * 4.0 / side * np.pi) * 2 + rng.uniform(0, 6))
        return np.stack([30 + 10 * waves, 110 + 25 * waves, 190 + 25 * waves], -1) + 6 * noise[..., None]
    if name == "snow":
        return np.stack([235 + 8 * noise, 238 + 8 * noise, 245 + 6 * noise], -1)
    if name == "brick":
        brick = side / 8
        offset = ((rows // brick) % 2) * brick
        mortar = (rows % brick < brick * 0.18) | ((cols + offset) % (2 * brick) < brick * 0.18)
        base = np.stack([165 + 10 * noise, 70 + 8 * noise, 50 + 6 * noise], -1)
        return np.where(mortar[..., None], 200.0, base)
    raise ValueError(f"unknown background {name!r}")


def render(scene: Scene, side: int, rng: np.random.Generator) -> np.ndarray:
    """An (side x side x 3) uint8 image of ``scene``, with random jitter in placement and colour."""
    big = side * SUPERSAMPLE
    rows, cols = np.mgrid[0:big, 0:big].astype(np.float64) + 0.5
    image = _background(scene.background, rows, cols, big, rng)

    radius = SIZE_RADIUS[scene.size] * big * rng.uniform(0.9, 1.1)
    center_row, center_col = (share * big + rng.uniform(-0.05, 0.05) * big for share in POSITION_CENTER[scene.position])
    inside = _shape_mask(scene.shape, (cols - center_col) / radius, (rows - center_row) / radius)
    fill = np.clip(np.array(COLORS[scene.color], dtype=np.float64) + rng.normal(0, 12, 3), 0, 255)
    period = big / 8
    darker = _pattern_mask(scene.pattern, rows, cols, period) & inside
    image[inside] = fill
    image[darker] = fill * 0.35

    if scene.night:
        image = image * 0.45 + np.array([5.0, 10.0, 35.0]) + rng.normal(0, 10, image.shape)
    image = image.reshape(side, SUPERSAMPLE, side, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
