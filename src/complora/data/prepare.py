"""Making a dataset folder the pipeline can read: ``<out>/images/`` plus ``<out>/split.json`` (CoOp form, paths
relative to ``images/``) and ``<out>/dataset.json`` (what it was made from, and the counts found).

Everything is built in a staging folder beside ``out`` and renamed into place only once the split lists
existing images and its class and split counts are the expected ones: a failed or corrupt download
leaves nothing that looks finished.
"""

from __future__ import annotations

import json
import logging
import lzma
import os
import shutil
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..atomic import staging_folder
from ..errors import ComploraError
from ..progress import progress_bar
from .download import download
from .images import image_paths, open_image
from .registry import DatasetSpec
from .splits import SPLITS, Entry, file_sha256, read_split

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
CUSTOM_FRACTIONS = (0.5, 0.2, 0.3)  # train / val / test of an image folder without a split file
IMAGENET_LAYOUT = """\
ImageNet cannot be downloaded automatically (image-net.org needs a login). Create this layout (CoOp's):
  <data.root>/imagenet/images/train/<wnid>/*.JPEG   (1000 folders, from ILSVRC2012_img_train.tar)
  <data.root>/imagenet/images/val/<wnid>/*.JPEG     (1000 folders: the 50,000 validation images sorted by class)
  <data.root>/imagenet/classnames.txt               (1000 lines "<wnid> <class name>", CoOp's file)
CLIP-LoRA's layout (imagenet/train/<wnid>, imagenet/val/<wnid>, plus classnames.txt) is recognised too."""
log = logging.getLogger(__name__)


def _entries(items: list[Entry]) -> list[list[Any]]:
    return [[path, label, name.replace("_", " ")] for path, label, name in items]


def _count_problems(spec: DatasetSpec, splits: dict[str, list[Entry]]) -> list[str]:
    problems = []
    classes = len({label for items in splits.values() for _, label, _ in items})
    if classes != spec.classes:
        problems.append(f"classes: expected {spec.classes}, found {classes}")
    for split in SPLITS:
        expected = spec.counts.get(split)
        if expected is not None and len(splits[split]) != expected:
            problems.append(f"{split}: expected {expected} items, found {len(splits[split])}")
    return problems


def _decodes(path: Path) -> None:
    open_image(path)


def _check_images(name: str, images: Path, splits: dict[str, list[Entry]], shown: object, decode: bool) -> None:
    """Every listed path stays inside ``images`` and is a file there (``shown`` is the folder the message names);
    with ``decode``, every listed file decodes as a whole image."""
    paths = sorted({path for items in splits.values() for path, _, _ in items})
    try:
        resolved = image_paths(images, paths)
    except ComploraError as error:
        raise ComploraError(f"{name}: {error}") from None
    missing = [path for path, file in zip(paths, resolved, strict=True) if not file.is_file()]
    if missing:
        raise ComploraError(
            f"{name}: {len(missing)} images the split lists are missing under {shown} (first: {missing[0]}); the "
            "download or folder is incomplete"
        )
    if decode:
        try:
            with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
                for _ in progress_bar(pool.map(_decodes, resolved), total=len(resolved), desc=f"checking {name}"):
                    pass
        except ComploraError as error:
            raise ComploraError(f"{name}: {error}") from None


def _finish(
    spec: DatasetSpec, staging: Path, splits: dict[str, list[Entry]], out: Path, source: dict, decode: bool = False
) -> Path:
    """Check the split against the images and the expected counts, write it, and move staging onto ``out``.
    With ``decode``, every image is decoded once too (a user's folder may hold anything)."""
    images = staging / "images"
    _check_images(spec.name, images, splits, source.get("images", images), decode)
    problems = _count_problems(spec, splits)
    if problems:
        raise ComploraError(
            f"{spec.name}: the data does not have the expected counts ({'; '.join(problems)}). Expected "
            "counts come from the paper's protocol (docs/datasets.md); a different split file or a "
            "partial copy gives other numbers"
        )
    (staging / "split.json").write_text(json.dumps({s: _entries(splits[s]) for s in SPLITS}, indent=1) + "\n")
    manifest = {
        "dataset": spec.name,
        "classes": spec.classes,
        "counts": {split: len(splits[split]) for split in SPLITS},
        "split_sha256": file_sha256(staging / "split.json"),
        "templates": list(spec.templates),
        "source": source,
        "complora": __version__,
    }
    (staging / "dataset.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    return out


def _staged(out: Path, build: Callable[[Path], Path]) -> Path:
    """Run ``build`` in a fresh staging folder beside ``out``; the staging folder goes if it fails."""
    with staging_folder(out) as staging:
        return build(staging)


def extract(archive: Path, destination: Path) -> None:
    """Unpack a tar (any compression) or zip archive; a corrupt one is deleted so a rerun downloads it again."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as bundle:
                bundle.extractall(destination)
        else:
            with tarfile.open(archive) as bundle:
                bundle.extractall(destination, filter="data")
    except OSError as error:
        if error.errno is not None:  # disk full, permissions: the archive is fine, the machine is not
            raise ComploraError(f"extracting {archive} into {destination} failed ({error})") from None
        _corrupt(archive, error)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError) as error:
        _corrupt(archive, error)


def _corrupt(archive: Path, error: Exception) -> None:
    archive.unlink(missing_ok=True)
    raise ComploraError(
        f"archive {archive} is corrupt or truncated ({error}); it was deleted from the cache, rerun to download "
        "it again"
    ) from None


def _fgvc_split(data_dir: Path) -> dict[str, list[Entry]]:
    """FGVCAircraft's official lists: ``variants.txt`` (class order) and ``images_variant_<split>.txt``."""
    try:
        variants = [line.strip() for line in (data_dir / "variants.txt").read_text().splitlines() if line.strip()]
        label = {name: index for index, name in enumerate(variants)}
        splits = {}
        for split in SPLITS:
            items = []
            for line in (data_dir / f"images_variant_{split}.txt").read_text().splitlines():
                if line.strip():
                    image, name = line.strip().split(" ", 1)
                    items.append((f"{image}.jpg", label[name], name))
            splits[split] = items
    except (OSError, KeyError, ValueError) as error:
        raise ComploraError(
            f"FGVCAircraft: the official list files in {data_dir} are missing or malformed ({error})"
        ) from None
    return splits


def _imagenet_split(root: Path) -> tuple[dict[str, list[Entry]], Path]:
    images = root / "images" if (root / "images" / "train").is_dir() else root
    names_file = root / "classnames.txt"
    if not (images / "train").is_dir() or not (images / "val").is_dir() or not names_file.is_file():
        raise ComploraError(f"ImageNet: {root} lacks train/, val/ or classnames.txt.\n{IMAGENET_LAYOUT}")
    names = {}
    for line in names_file.read_text().splitlines():
        if line.strip():
            wnid, _, name = line.strip().partition(" ")
            names[wnid] = name
    wnids = sorted(path.name for path in (images / "train").iterdir() if path.is_dir())
    missing = [wnid for wnid in wnids if wnid not in names]
    if missing:
        raise ComploraError(f"ImageNet: {names_file} has no name for {len(missing)} class folders (first {missing[0]})")
    unsorted = [wnid for wnid in wnids if not (images / "val" / wnid).is_dir()]
    if unsorted:
        raise ComploraError(
            f"ImageNet: {images / 'val'} has no folder for {len(unsorted)} classes (first {unsorted[0]}): sort the "
            f"validation images into one folder per class.\n{IMAGENET_LAYOUT}"
        )
    splits: dict[str, list[Entry]] = {}
    for split, folder in (("train", "train"), ("test", "val")):
        splits[split] = [
            (f"{folder}/{wnid}/{file.name}", label, names[wnid])
            for label, wnid in enumerate(wnids)
            for file in sorted((images / folder / wnid).iterdir())
            if file.suffix.lower() in IMAGE_SUFFIXES
        ]
    splits["val"] = list(splits["test"])  # CoOp: ImageNet's validation set is its test set
    return splits, images


def _read_downloaded_split(path: Path) -> dict[str, list[Entry]]:
    """A downloaded split file; one that does not parse (truncated, or an HTML page) leaves the cache."""
    try:
        return read_split(path)
    except ComploraError as error:
        path.unlink(missing_ok=True)
        raise ComploraError(f"{error}; the file was removed from the cache, rerun to download it again") from None


def find_local(spec: DatasetSpec, data_root: str | os.PathLike[str]) -> Path | None:
    """The user's copy of ``spec`` under ``data_root``, by CoOp's or CLIP-LoRA's folder name."""
    for folder in spec.folders:
        candidate = Path(data_root) / folder
        if candidate.is_dir():
            return candidate
    return None


def prepare_local(spec: DatasetSpec, folder: Path, out: str | os.PathLike[str], cache: str | os.PathLike[str]) -> Path:
    """Use the data a user already has: ``images/`` links to their folder; their split file is used if present."""
    out, folder = Path(out), Path(folder).resolve()

    def build(staging: Path) -> Path:
        if spec.split_kind == "imagenet":
            splits, images = _imagenet_split(folder)
        else:
            images = folder / spec.local_image_dir
            if spec.split_kind == "fgvc":
                splits = _fgvc_split(folder)
            else:
                split_file = folder / spec.split_file.name
                if split_file.is_file():
                    splits = read_split(split_file)
                else:
                    splits = _read_downloaded_split(download(spec.split_file, Path(cache) / spec.name))
        (staging / "images").symlink_to(images.resolve(), target_is_directory=True)
        return _finish(spec, staging, splits, out, {"kind": "local", "images": str(images.resolve())})

    return _staged(out, build)


def prepare_download(spec: DatasetSpec, out: str | os.PathLike[str], cache: str | os.PathLike[str]) -> Path:
    """Download (resumable, verified, mirror by mirror), extract, and lay out ``spec`` under ``out``."""
    if spec.split_kind == "imagenet" or not spec.downloadable:
        raise ComploraError(
            f"{spec.name} cannot be downloaded automatically; set data.root (--data-root) to the folder that holds "
            f"it.\n{IMAGENET_LAYOUT}"
        )
    out, cache = Path(out), Path(cache) / spec.name
    try:
        archives = [download(remote, cache) for remote in spec.archives]
        split_file = download(spec.split_file, cache) if spec.split_file else None
    except ComploraError as error:
        raise ComploraError(f"{spec.name}: {error}" + (f"\nNote: {spec.notes}" if spec.notes else "")) from None

    def build(staging: Path) -> Path:
        extracted = staging / "extracted"
        for archive in archives:
            extract(archive, extracted)
        images = extracted / spec.image_dir
        if not images.is_dir():
            raise ComploraError(
                f"{spec.name}: the archives hold no {spec.image_dir}/ folder; the mirror served another layout"
            )
        splits = _fgvc_split(images.parent) if spec.split_kind == "fgvc" else _read_downloaded_split(split_file)
        os.replace(images, staging / "images")
        if extracted.exists():  # the rest of the archives (for image_dir "." nothing is left)
            shutil.rmtree(extracted)
        source = {
            "kind": "download",
            "archives": {path.name: file_sha256(path) for path in archives},
            "split_file": {split_file.name: file_sha256(split_file)} if split_file else None,
        }
        return _finish(spec, staging, splits, out, source)

    return _staged(out, build)


def custom_split(images: Path, seed: int, classnames: list[str] | None = None) -> dict[str, list[Entry]]:
    """A seeded 50/20/30 split per class of an image folder with one sub-folder per class."""
    folders = sorted(path for path in images.iterdir() if path.is_dir())
    if not folders:
        raise ComploraError(f"custom dataset {images}: no class sub-folders; expected <images>/<class>/<image files>")
    if classnames is not None and len(classnames) != len(folders):
        raise ComploraError(
            f"custom dataset {images}: {len(classnames)} class names for {len(folders)} class folders; give one per "
            "folder, in sorted folder order"
        )
    splits: dict[str, list[Entry]] = {split: [] for split in SPLITS}
    for label, folder in enumerate(folders):
        files = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(files) < 3:
            raise ComploraError(f"custom dataset {images}: class {folder.name} has {len(files)} images, needs >= 3")
        # A generator per class (seeded by the class's folder name): adding images to one class, or another
        # class, leaves the other classes' splits as they were.
        rng = np.random.default_rng([seed, zlib.crc32(folder.name.encode())])
        order = [files[i] for i in rng.permutation(len(files))]
        n_train = max(1, int(CUSTOM_FRACTIONS[0] * len(files)))
        n_val = max(1, int(CUSTOM_FRACTIONS[1] * len(files)))
        name = classnames[label] if classnames else folder.name
        parts = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
        for split, chosen in parts.items():
            splits[split].extend((f"{folder.name}/{file}", label, name) for file in sorted(chosen))
    return splits


def _check_classes(name: str, source: object, splits: dict[str, list[Entry]]) -> None:
    """Refuse, when the dataset is prepared, classes a classifier cannot use: fewer than two, labels that are
    not 0 .. C-1, or one label under two names."""
    names: dict[int, set[str]] = {}
    for items in splits.values():
        for _, label, classname in items:
            names.setdefault(label, set()).add(classname)
    if len(names) < 2:
        raise ComploraError(f"custom dataset {name} ({source}): {len(names)} class; a classifier needs at least 2")
    outside = sorted(label for label in names if not 0 <= label < len(names))
    if outside:
        raise ComploraError(
            f"custom dataset {name} ({source}): label(s) {outside[:5]} outside the classes 0 .. {len(names) - 1}; "
            "number the classes 0 .. C-1 in the split file"
        )
    twice = {label: sorted(found) for label, found in names.items() if len(found) > 1}
    if twice:
        label, found = next(iter(sorted(twice.items())))
        raise ComploraError(
            f"custom dataset {name} ({source}): label {label} has {len(found)} names {found}; give each label one name"
        )


def prepare_custom(
    name: str,
    images: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    split_file: str | os.PathLike[str] | None = None,
    classnames_file: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> Path:
    """A user's own dataset: their split file, or a seeded 50/20/30 split of one sub-folder per class."""
    images, out = Path(images).resolve(), Path(out)
    if not images.is_dir():
        raise ComploraError(f"custom dataset {name}: images folder {images} does not exist")
    classnames = None
    if classnames_file is not None:
        if split_file is not None:
            raise ComploraError(
                f"custom dataset {name}: give class names or a split file, not both (the split file names its classes)"
            )
        try:
            classnames = [line.strip() for line in Path(classnames_file).read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as error:
            raise ComploraError(f"custom dataset {name}: class names file {classnames_file}: {error}") from None
    splits = read_split(split_file) if split_file else custom_split(images, seed, classnames)
    _check_classes(name, split_file or images, splits)
    classes = len({label for items in splits.values() for _, label, _ in items})
    spec = DatasetSpec(
        name=name,
        classes=classes,
        counts={split: None for split in SPLITS},
        split_kind="custom",
        image_dir=".",
        local_image_dir=".",
        folders=(),
    )

    def build(staging: Path) -> Path:
        (staging / "images").symlink_to(images, target_is_directory=True)
        source = {"kind": "custom", "images": str(images), "split_file": str(split_file) if split_file else None,
                  "seed": None if split_file else seed}  # fmt: skip
        return _finish(spec, staging, splits, out, source, decode=True)

    return _staged(out, build)
