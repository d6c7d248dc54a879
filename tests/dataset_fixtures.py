"""Offline dataset fixtures: a local HTTP server with Range support, and tiny archives in each benchmark's
real layout together with the registry override that serves them."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from complora.data.registry import load_registry

CLASSES = ("red_panda", "sea_lion", "tabby")
PER_SPLIT = {"train": 2, "val": 1, "test": 1}


@contextmanager
def serve(root: Path) -> Iterator[tuple[str, list]]:
    """Serve ``root`` on 127.0.0.1; yields the base URL and the list of (path, Range header) requests."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(root)))
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.requests
    finally:
        httpd.shutdown()


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with HTTP Range support (for resumed downloads); records every request."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Range")))
        path = Path(self.translate_path(self.path))
        header = self.headers.get("Range")
        if not path.is_file() or not header:
            return super().do_GET()
        data = path.read_bytes()
        start = int(header.removeprefix("bytes=").split("-")[0])
        self.send_response(206)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        self.wfile.write(data[start:])


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_archive(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as bundle:
            for name, data in members.items():
                bundle.writestr(name, data)
        return
    with tarfile.open(path, "w:gz") as bundle:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def build_fixture(name: str, url: str, root: Path) -> dict:
    """Archives in ``name``'s real layout (3 classes, 2/1/1 images each) and the registry override serving them."""
    spec = load_registry()[name]
    served = root / name
    split = {split: [] for split in PER_SPLIT}
    files: dict[str, dict[str, bytes]] = {archive.name: {} for archive in spec.archives}
    first, last = spec.archives[0].name, spec.archives[-1].name
    index = 0
    if spec.split_kind == "fgvc":
        data = "fgvc-aircraft-2013b/data"
        files[first][f"{data}/variants.txt"] = "".join(f"{c.replace('_', ' ')}\n" for c in CLASSES).encode()
        for split_name, count in PER_SPLIT.items():
            lines = []
            for cls in CLASSES:
                for _ in range(count):
                    index += 1
                    files[first][f"{data}/images/{index:07d}.jpg"] = jpeg(index)
                    lines.append(f"{index:07d} {cls.replace('_', ' ')}\n")
            files[first][f"{data}/images_variant_{split_name}.txt"] = "".join(lines).encode()
    else:
        for split_name, count in PER_SPLIT.items():
            for label, cls in enumerate(CLASSES):
                for _ in range(count):
                    index += 1
                    # Stanford Cars: train/val images come in cars_train.tgz, test images in cars_test.tgz.
                    archive = last if split_name == "test" else first
                    folder = archive.split(".")[0] if spec.image_dir == "." else cls
                    relpath = f"{folder}/{index:05d}.jpg"
                    prefix = "" if spec.image_dir == "." else f"{spec.image_dir}/"
                    files[archive][prefix + relpath] = jpeg(index)
                    split[split_name].append([relpath, label, cls])
    override: dict = {"classes": len(CLASSES), "counts": {s: len(CLASSES) * n for s, n in PER_SPLIT.items()}}
    override["archives"] = []
    for archive, members in files.items():
        write_archive(served / archive, members)
        urls = [f"{url}/missing/{name}/{archive}", f"{url}/{name}/{archive}"]  # the first mirror answers 404
        override["archives"].append({"name": archive, "urls": urls, "md5": md5(served / archive)})
    if spec.split_file:
        (served / spec.split_file.name).write_text(json.dumps(split))
        override["split_file"] = {"name": spec.split_file.name, "urls": [f"{url}/{name}/{spec.split_file.name}"]}
    return override
