"""The paper's datasets, offline: a local HTTP server serves tiny archives built in each dataset's real layout;
each goes through download -> verify -> extract -> prepare -> k-shot split, and each failure mode gets its
clear outcome with no partial output."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from complora.cli import main
from complora.data.download import download
from complora.data.prepare import IMAGENET_LAYOUT, find_local, prepare_custom, prepare_download, prepare_local
from complora.data.registry import PAPER_DATASETS, RemoteFile, load_registry
from complora.data.splits import few_shot_split, read_split
from complora.data.training import TrainingImages
from complora.errors import ComploraError
from dataset_fixtures import CLASSES, build_fixture, jpeg, serve

DOWNLOADABLE = [name for name in PAPER_DATASETS if name != "ImageNet"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, list]]:
    root = tmp_path_factory.mktemp("www")
    with serve(root) as (url, requests):
        yield url, root, requests


@pytest.fixture(scope="module")
def registry_file(server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    url, root, _ = server
    path = tmp_path_factory.mktemp("registry") / "registry.yaml"
    path.write_text(yaml.safe_dump({name: build_fixture(name, url, root) for name in DOWNLOADABLE}))
    return path


def tree_files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.mark.parametrize("name", DOWNLOADABLE)
def test_download_verify_extract_prepare_split(name: str, server, registry_file: Path, tmp_path: Path):
    _, _, requests = server
    spec = load_registry(registry_file)[name]
    out = prepare_download(spec, tmp_path / "data" / name, tmp_path / "cache")
    assert sorted(os.listdir(tmp_path / "data")) == [name], "no staging folder is left behind"
    splits = read_split(out / "split.json")
    assert {split: len(items) for split, items in splits.items()} == {"train": 6, "val": 3, "test": 3}
    assert sorted({entry[2] for entry in splits["test"]}) == sorted(c.replace("_", " ") for c in CLASSES)
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["counts"] == {"train": 6, "val": 3, "test": 3} and manifest["source"]["kind"] == "download"
    assert f"/missing/{name}/{spec.archives[0].name}" in [path for path, _ in requests], "the 404 mirror was tried"
    few = few_shot_split(out / "split.json", name, shots=2, seed=1)
    images = TrainingImages(out / "images", few["train"], (8, 8))
    assert len(images) == 6 and images.in_memory
    assert images.crops(torch.arange(6), (0.08, 1.0), torch.Generator().manual_seed(0)).shape == (6, 8, 8, 3)


def test_cli_downloads_into_the_cache_once(registry_file: Path, tmp_path: Path, server):
    _, _, requests = server
    args = ["dataset", "--name", "EuroSAT", "--out", str(tmp_path / "EuroSAT"), "--cache", str(tmp_path / "cache"),
            "--registry", str(registry_file)]  # fmt: skip
    assert main(args) == 0
    downloads = len([path for path, _ in requests if path.endswith("EuroSAT.zip")])
    assert main([*args[:4], str(tmp_path / "again"), *args[5:]]) == 0
    assert len([path for path, _ in requests if path.endswith("EuroSAT.zip")]) == downloads, "the cache is reused"
    assert main(["dataset", "--name", "Imagenette", *args[3:]]) == 2


def test_interrupted_download_resumes(server, tmp_path: Path):
    url, root, requests = server
    (root / "resume").mkdir()
    payload = os.urandom(300_000)
    (root / "resume" / "big.bin").write_bytes(payload)
    remote = RemoteFile("big.bin", (f"{url}/resume/big.bin",), sha256=hashlib.sha256(payload).hexdigest())
    (tmp_path / "big.bin.part").write_bytes(payload[:120_000])  # what a killed download left
    assert download(remote, tmp_path).read_bytes() == payload
    assert ("/resume/big.bin", "bytes=120000-") in requests
    assert not (tmp_path / "big.bin.part").exists()
    # A dead first mirror does not throw the partial file away: the next mirror continues it.
    behind_dead = RemoteFile("big.bin", (f"{url}/dead/big.bin", f"{url}/resume/big.bin"), sha256=remote.sha256)
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "big.bin.part").write_bytes(payload[:50_000])
    assert download(behind_dead, tmp_path / "again").read_bytes() == payload
    assert ("/dead/big.bin", "bytes=50000-") in requests and ("/resume/big.bin", "bytes=50000-") in requests


def override(registry_file: Path, tmp_path: Path, name: str, **changes) -> dict:
    data = yaml.safe_load(registry_file.read_text())
    data[name].update(changes)
    path = tmp_path / "override.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_registry(path)


def test_checksum_mismatch_tries_every_mirror_and_leaves_nothing(registry_file: Path, tmp_path: Path):
    data = yaml.safe_load(registry_file.read_text())["DTD"]
    data["archives"][0]["md5"] = "0" * 32
    spec = override(registry_file, tmp_path, "DTD", archives=data["archives"])["DTD"]
    with pytest.raises(ComploraError, match="every mirror failed") as error:
        prepare_download(spec, tmp_path / "data" / "DTD", tmp_path / "cache")
    assert "checksum mismatch" in str(error.value) and "404" in str(error.value)
    assert tree_files(tmp_path / "data") == [] and tree_files(tmp_path / "cache" / "DTD") == []


def test_corrupt_archive_is_refused_and_dropped_from_the_cache(server, registry_file: Path, tmp_path: Path):
    url, root, _ = server
    (root / "corrupt").mkdir(exist_ok=True)
    good = (root / "DTD" / "dtd-r1.0.1.tar.gz").read_bytes()
    (root / "corrupt" / "dtd-r1.0.1.tar.gz").write_bytes(good[: len(good) // 2])  # truncated, no digest to catch it
    archives = [{"name": "dtd-r1.0.1.tar.gz", "urls": [f"{url}/corrupt/dtd-r1.0.1.tar.gz"]}]
    spec = override(registry_file, tmp_path, "DTD", archives=archives)["DTD"]
    with pytest.raises(ComploraError, match="corrupt or truncated"):
        prepare_download(spec, tmp_path / "data" / "DTD", tmp_path / "cache")
    assert tree_files(tmp_path / "data") == []
    assert "dtd-r1.0.1.tar.gz" not in tree_files(tmp_path / "cache" / "DTD"), "a rerun downloads it again"


def test_a_split_file_that_does_not_parse_leaves_the_cache(server, registry_file: Path, tmp_path: Path):
    url, root, _ = server
    (root / "html").mkdir(exist_ok=True)
    (root / "html" / "split_zhou_EuroSAT.json").write_text("<html>Google Drive can't scan this file</html>")
    split = {"name": "split_zhou_EuroSAT.json", "urls": [f"{url}/html/split_zhou_EuroSAT.json"]}
    spec = override(registry_file, tmp_path, "EuroSAT", split_file=split)["EuroSAT"]
    with pytest.raises(ComploraError, match="removed from the cache"):
        prepare_download(spec, tmp_path / "data" / "EuroSAT", tmp_path / "cache")
    assert "split_zhou_EuroSAT.json" not in tree_files(tmp_path / "cache" / "EuroSAT")
    assert tree_files(tmp_path / "data") == []


def test_wrong_class_count_names_dataset_expected_and_found(registry_file: Path, tmp_path: Path):
    spec = override(registry_file, tmp_path, "Food101", classes=101)["Food101"]
    with pytest.raises(ComploraError, match=r"Food101: .*classes: expected 101, found 3"):
        prepare_download(spec, tmp_path / "data" / "Food101", tmp_path / "cache")
    assert tree_files(tmp_path / "data") == []


@pytest.mark.parametrize("folder", ["oxford_pets", "OxfordPets"])
def test_existing_data_under_coop_or_cliplora_names(folder: str, registry_file: Path, tmp_path: Path):
    prepared = prepare_download(load_registry(registry_file)["OxfordPets"], tmp_path / "first", tmp_path / "cache")
    user = tmp_path / "datasets" / folder
    user.mkdir(parents=True)
    os.replace(prepared / "images", user / "images")
    (user / "split_zhou_OxfordPets.json").write_text((prepared / "split.json").read_text())
    spec = load_registry(registry_file)["OxfordPets"]
    assert find_local(spec, tmp_path / "datasets") == user
    out = prepare_local(spec, user, tmp_path / "data" / "OxfordPets", tmp_path / "no-downloads")
    assert (out / "images").resolve() == (user / "images").resolve()
    assert json.loads((out / "dataset.json").read_text())["source"]["kind"] == "local"
    assert not (tmp_path / "no-downloads").exists(), "a split file in the user's folder is used as is"


def test_imagenet_missing_gives_the_layout_and_present_is_prepared(tmp_path: Path):
    spec = load_registry()["ImageNet"]
    with pytest.raises(ComploraError) as error:
        prepare_download(spec, tmp_path / "out", tmp_path / "cache")
    assert "imagenet/images/val/<wnid>" in str(error.value) and str(error.value).endswith(IMAGENET_LAYOUT)
    root = tmp_path / "datasets" / "imagenet"
    for split, count in (("train", 3), ("val", 2)):
        for wnid in ("n01440764", "n01443537"):
            (root / "images" / split / wnid).mkdir(parents=True)
            for i in range(count):
                (root / "images" / split / wnid / f"{i}.JPEG").write_bytes(jpeg(i))
    (root / "classnames.txt").write_text("n01440764 tench\nn01443537 goldfish\n")
    tiny = override_spec(spec, classes=2, counts={"train": None, "val": 4, "test": 4})
    (root / "images" / "val" / "n01443537").rename(root / "unsorted")
    with pytest.raises(ComploraError, match="sort the validation images"):
        prepare_local(tiny, root, tmp_path / "data" / "ImageNet", tmp_path)
    (root / "unsorted").rename(root / "images" / "val" / "n01443537")
    out = prepare_local(tiny, find_local(tiny, tmp_path / "datasets"), tmp_path / "data" / "ImageNet", tmp_path)
    splits = read_split(out / "split.json")
    assert len(splits["train"]) == 6 and splits["val"] == splits["test"] and splits["test"][0][2] == "tench"


def override_spec(spec, **changes):
    from dataclasses import replace

    return replace(spec, **changes)


def test_custom_image_folder_and_own_split_file(tmp_path: Path):
    images = tmp_path / "my_images"
    for cls in ("cat", "dog"):
        (images / cls).mkdir(parents=True)
        for i in range(10):
            (images / cls / f"{i}.jpg").write_bytes(jpeg(i))
    first = prepare_custom("pets", images, tmp_path / "a", seed=3)
    again = prepare_custom("pets", images, tmp_path / "b", seed=3)
    assert (first / "split.json").read_bytes() == (again / "split.json").read_bytes()
    splits = read_split(first / "split.json")
    assert {split: len(items) for split, items in splits.items()} == {"train": 10, "val": 4, "test": 6}
    names = tmp_path / "names.txt"
    names.write_text("house cat\nhound\n")
    named = read_split(prepare_custom("pets", images, tmp_path / "c", classnames_file=names) / "split.json")
    assert {entry[2] for entry in named["train"]} == {"house cat", "hound"}
    own = prepare_custom("pets", images, tmp_path / "d", split_file=first / "split.json")
    assert read_split(own / "split.json") == splits
    names.write_text("only one\n")
    with pytest.raises(ComploraError, match="1 class names for 2 class folders"):
        prepare_custom("pets", images, tmp_path / "e", classnames_file=names)
    assert not (tmp_path / "e").exists()
    with pytest.raises(ComploraError, match="not both"):
        prepare_custom("pets", images, tmp_path / "f", split_file=first / "split.json", classnames_file=names)


def test_custom_split_per_class_is_stable_and_small_classes_get_a_test_image(tmp_path: Path):
    images = tmp_path / "images"
    for cls, count in (("ant", 3), ("bee", 12)):
        (images / cls).mkdir(parents=True)
        for i in range(count):
            (images / cls / f"{i}.jpg").write_bytes(jpeg(i))
    before = read_split(prepare_custom("bugs", images, tmp_path / "a", seed=1) / "split.json")
    assert [len([e for e in before[s] if e[2] == "ant"]) for s in ("train", "val", "test")] == [1, 1, 1]
    (images / "ant" / "3.jpg").write_bytes(jpeg(3))
    after = read_split(prepare_custom("bugs", images, tmp_path / "b", seed=1) / "split.json")
    for split in ("train", "val", "test"):
        assert [e for e in before[split] if e[2] == "bee"] == [e for e in after[split] if e[2] == "bee"]


def test_custom_classes_a_classifier_cannot_use_are_refused_when_prepared(tmp_path: Path):
    images = tmp_path / "images"
    (images / "cat").mkdir(parents=True)
    for i in range(4):
        (images / "cat" / f"{i}.jpg").write_bytes(jpeg(i))
    with pytest.raises(ComploraError, match="1 class; a classifier needs at least 2"):
        prepare_custom("one", images, tmp_path / "one")
    (images / "dog").mkdir()
    for i in range(4):
        (images / "dog" / f"{i}.jpg").write_bytes(jpeg(i + 4))
    entries = [["cat/0.jpg", 0, "cat"], ["dog/0.jpg", 1, "dog"], ["dog/1.jpg", 1, "dog"]]
    for case, change, message in (
        ("outside", ["cat/1.jpg", 5, "lynx"], r"label\(s\) \[5\] outside the classes 0 \.\. 2"),
        ("two names", ["cat/1.jpg", 0, "kitten"], r"label 0 has 2 names \['cat', 'kitten'\]"),
    ):
        split = tmp_path / f"{case}.json"
        split.write_text(json.dumps({"train": entries, "val": entries, "test": [*entries, change]}))
        with pytest.raises(ComploraError, match=message):
            prepare_custom("pets", images, tmp_path / case, split_file=split)
        assert not (tmp_path / case).exists(), "nothing half-written"
