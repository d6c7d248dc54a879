"""The evaluation cache: a dataset's test split decoded once into open_clip's preprocessed uint8 pixels.

``<cache>/pixels.npy`` holds (N, H, W, 3) uint8 in the split file's test order, after resize and crop and
before normalisation (a plain ``.npy``: ``numpy.load(..., mmap_mode="r")`` maps it); ``<cache>/manifest.json``
holds what it was made from (split-file sha256, the transform's description and hash), its count, shape
and content sha256, and the versions of the libraries that decided the pixels. The folder is built beside
its final place and renamed into it, so a killed build leaves nothing that looks finished. A reader checks
the manifest against what it needs and hashes the pixels as it streams them: a mismatched or corrupt cache
is removed (the next run rebuilds it) and its results are thrown away, never reported.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from .. import __version__
from ..artifacts import IGNORED_NAMES
from ..atomic import staging_folder
from ..errors import ComploraError
from ..progress import progress_bar
from .imagelibs import library_versions
from .images import EvalTransform, image_paths
from .splits import Entry, file_sha256

PIXELS_FILE = "pixels.npy"
MANIFEST_FILE = "manifest.json"
CACHE_FILES = {PIXELS_FILE, MANIFEST_FILE}
FORMAT = "complora-eval-cache"
FORMAT_VERSION = 1
READ_BLOCK = 1 << 24


def decode_all(
    root: str | os.PathLike[str], entries: list[Entry], transform: EvalTransform, threads: int = 1
) -> Iterator[np.ndarray]:
    """Each entry's preprocessed pixels, in order, decoded by ``threads`` threads (PIL's decoders and
    resizing release the GIL, so threads run in parallel)."""
    paths = image_paths(root, [relpath for relpath, _, _ in entries])
    if threads <= 1:
        yield from map(transform.load, paths)
        return
    with ThreadPoolExecutor(threads) as pool:
        # Bounded look-ahead: memory stays a few images per thread whatever the split's size.
        window = 4 * threads
        pending = [pool.submit(transform.load, path) for path in paths[:window]]
        for index in range(len(paths)):
            array = pending[index].result()
            pending[index] = None  # type: ignore[call-overload]
            if index + window < len(paths):
                pending.append(pool.submit(transform.load, paths[index + window]))
            yield array


def _is_cache_folder(path: Path) -> bool:
    """Only a folder that holds nothing but a cache's files is ever deleted as a cache."""
    return path.is_dir() and set(os.listdir(path)) - IGNORED_NAMES <= CACHE_FILES


def build_eval_cache(
    dataset: str,
    root: str | os.PathLike[str],
    split_file: str | os.PathLike[str],
    entries: list[Entry],
    transform: EvalTransform,
    out: str | os.PathLike[str],
    threads: int = 1,
) -> dict[str, Any]:
    """Decode ``entries`` (the test split of ``split_file``) into a cache at ``out``; returns its manifest."""
    if not entries:
        raise ComploraError(f"split file {split_file}: the 'test' list is empty; there is nothing to cache")
    out = Path(out)
    if out.exists() and not _is_cache_folder(out):
        raise ComploraError(f"--out {out} exists and is not an evaluation cache; choose another folder")
    with staging_folder(out) as staging:
        shape = (len(entries), *transform.size, 3)
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
        digest = hashlib.sha256(header.getvalue())
        with open(staging / PIXELS_FILE, "wb") as handle:
            handle.write(header.getvalue())
            decoded = decode_all(root, entries, transform, threads)
            for array in progress_bar(decoded, total=len(entries), desc=f"caching {dataset}"):
                handle.write(array.data)
                digest.update(array)
            handle.flush()
            os.fsync(handle.fileno())
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dataset": dataset,
            "split_file": {"path": str(split_file), "sha256": file_sha256(split_file)},
            "transform": {**transform.describe(), "sha256": transform.sha256},
            "count": len(entries),
            "shape": list(shape),
            "dtype": "uint8",
            "bytes": (staging / PIXELS_FILE).stat().st_size,
            "content_sha256": digest.hexdigest(),
            "versions": {"complora": __version__, **library_versions()},
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        # The old cache is renamed aside first: readers never see a half-replaced folder. Its name is a
        # staging name, so a build killed right here leaves nothing the next build does not clear.
        retired = staging.with_name(f"{staging.name}-retired")
        if out.exists():
            os.replace(out, retired)
        os.replace(staging, out)
        shutil.rmtree(retired, ignore_errors=True)
    return manifest


def _refuse(path: Path, why: str) -> NoReturn:
    removed = _is_cache_folder(path)
    if removed:
        shutil.rmtree(path, ignore_errors=True)
    then = (
        "It was removed and nothing was reported from it; rerun (snakemake rebuilds it, or `complora eval-cache`)"
        if removed
        else "It is not a cache folder (it holds other files), so it was left alone; check --eval-cache"
    )
    raise ComploraError(f"evaluation cache {path}: {why}. {then}")


class CachedPixels:
    """Batches of a checked cache, read with plain file reads (mapped pages would count against the job's
    memory as it walks the file), hashed as they stream by."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.shape = tuple(manifest["shape"])

    def __len__(self) -> int:
        return self.shape[0]

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        try:
            yield from self._read(batch_size)
        except OSError as error:
            raise ComploraError(
                f"evaluation cache {self.path} could not be read ({error}); rerun to rebuild it"
            ) from None

    def _read(self, batch_size: int) -> Iterator[np.ndarray]:
        item = int(np.prod(self.shape[1:]))
        with open(self.path / PIXELS_FILE, "rb") as handle:
            try:
                major, _ = np.lib.format.read_magic(handle)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                header_shape, _, dtype = read_header(handle)
            # numpy reports a damaged header with ValueError, SyntaxError or a tokenizer error.
            except Exception as error:
                _refuse(self.path, f"its pixel file's header is damaged ({type(error).__name__}: {error})")
            if tuple(header_shape) != self.shape or dtype != np.uint8:
                _refuse(self.path, f"its array is {dtype} {tuple(header_shape)}, the manifest says uint8 {self.shape}")
            offset = handle.tell()
            handle.seek(0)
            digest = hashlib.sha256(handle.read(offset))
            for start in range(0, len(self), batch_size):
                count = min(batch_size, len(self) - start)
                batch = np.empty((count, *self.shape[1:]), dtype=np.uint8)
                if handle.readinto(memoryview(batch).cast("B")) != count * item:
                    _refuse(self.path, "its pixel file is shorter than its manifest says (truncated)")
                digest.update(batch)
                yield batch
            while block := handle.read(READ_BLOCK):
                digest.update(block)
        if digest.hexdigest() != self.manifest["content_sha256"]:
            _refuse(self.path, "its pixels do not match the content sha256 in its manifest (corrupt)")


def open_eval_cache(
    path: str | os.PathLike[str], split_file: str | os.PathLike[str], transform: EvalTransform
) -> CachedPixels:
    """The cache at ``path`` if it was made from ``split_file`` with ``transform`` and today's image libraries;
    otherwise it is removed and the error says what differed."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        made_from = (manifest["format"], manifest["split_file"]["sha256"], manifest["transform"]["sha256"])
        shape, size, versions = tuple(manifest["shape"]), int(manifest["bytes"]), manifest["versions"]
    except FileNotFoundError:
        if not path.exists():
            raise ComploraError(
                f"evaluation cache {path} does not exist; build it with `complora eval-cache` (snakemake does) or "
                "set data.eval_cache: false to decode the images instead"
            ) from None
        _refuse(path, "it has no manifest (an unfinished build)")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        _refuse(path, f"its manifest is unreadable ({error!r})")
    if made_from[0] != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        _refuse(path, f"it is not a format-{FORMAT_VERSION} {FORMAT}")
    if made_from[1] != file_sha256(split_file):
        _refuse(path, f"it was made from another version of {split_file} (sha256 {made_from[1][:12]})")
    if made_from[2] != transform.sha256:
        _refuse(
            path,
            f"it holds pixels of another transform ({manifest['transform'].get('pixel_stages')}, "
            f"{made_from[2][:12]}) than this model's ({transform.describe()['pixel_stages']}, {transform.sha256[:12]})",
        )
    changed = {name: (versions.get(name), now) for name, now in library_versions().items() if versions.get(name) != now}
    if changed:
        _refuse(path, f"it was decoded by other image libraries than today's ({changed}: made with, now)")
    if shape[1:] != (*transform.size, 3) or not (path / PIXELS_FILE).is_file():
        _refuse(path, f"its shape {shape} is not (N, {', '.join(map(str, transform.size))}, 3) or its pixels are gone")
    if (path / PIXELS_FILE).stat().st_size != size:
        _refuse(path, f"its pixel file has {(path / PIXELS_FILE).stat().st_size} bytes, its manifest says {size}")
    return CachedPixels(path, manifest)
