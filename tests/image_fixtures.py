"""Image files of every awkward kind a real dataset holds, and broken ones, made with PIL."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def _photo(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth picture with some texture, so that resizing and cropping visibly matter."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(7 * x + seed), np.cos(5 * y), np.sin(3 * (x + y))], axis=-1) * 100 + 128
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def unusual_images(folder: Path) -> dict[str, Path]:
    """One file per case of the real-images issue: non-square, small, and every common PIL mode."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}

    def save(name: str, image: Image.Image, **options) -> None:
        files[name] = folder / name
        image.save(files[name], **options)

    save("landscape.jpg", Image.fromarray(_photo(500, 375, 1)), quality=90)
    save("portrait.jpg", Image.fromarray(_photo(375, 500, 2)), quality=90)
    save("small.png", Image.fromarray(_photo(20, 15, 3)))
    save("grayscale.jpg", Image.fromarray(_photo(300, 200, 4)).convert("L"))
    rgba = Image.fromarray(_photo(240, 180, 5)).convert("RGBA")
    rgba.putalpha(Image.fromarray(_photo(240, 180, 6)[..., 0]))
    save("rgba.png", rgba)
    save("palette.png", Image.fromarray(_photo(210, 260, 7)).convert("P", palette=Image.Palette.ADAPTIVE))
    save("cmyk.jpg", Image.fromarray(_photo(320, 240, 8)).convert("CMYK"))
    deep = (_photo(200, 150, 9)[..., 0].astype(np.uint16) * 257).astype(np.uint16)
    save("deep16.png", Image.fromarray(deep))  # uint16 gives mode I;16
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    save("exif_rotated.jpg", Image.fromarray(_photo(400, 300, 10)), exif=exif.tobytes())
    return files


def broken_images(folder: Path) -> dict[str, Path]:
    """Files a split may list that are not whole images."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(_photo(300, 200, 11)).save(buffer, format="JPEG")
    whole = buffer.getvalue()
    contents = {
        "truncated.jpg": whole[: len(whole) // 2],
        "corrupt.jpg": whole[:200] + bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)),
        "empty.jpg": b"",
        "not_an_image.png": b"name,label\ncat,1\n",
    }
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in contents}
