"""One entry per benchmark of the paper grid (docs/datasets.md has the facts).

Every entry says where its archives and split file come from (mirrors in order, checksums where
published), where the images sit inside the extracted archives, which folder names users already have
it under (CoOp's and CLIP-LoRA's), the expected class and split counts, and CoOp's zero-shot prompt. A
YAML file of overrides (``load_registry(path)``) adds mirrors or replaces URLs without code changes.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ComploraError

COOP_DRIVE = "https://drive.usercontent.google.com/download?id={}&export=download&confirm=t"


@dataclass(frozen=True)
class RemoteFile:
    """A file to download: mirrors tried in order, checked against the published digest when there is one."""

    name: str
    urls: tuple[str, ...]
    md5: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: int
    counts: dict[str, int | None]  # train / val / test items; None where the count is not fixed
    split_kind: str  # "coop": a CoOp split file; "fgvc": built from the official lists; "imagenet": from folders
    image_dir: str  # inside the extracted archives, the folder the split's relative paths start from
    local_image_dir: str  # the same inside a user's CoOp / CLIP-LoRA folder
    folders: tuple[str, ...]  # the folder names users have the dataset under (CoOp's, then CLIP-LoRA's)
    archives: tuple[RemoteFile, ...] = ()
    split_file: RemoteFile | None = None
    # CoOp's zero-shot prompt(s), which the published zero-shot CLIP row used (CLIP-LoRA trains and evaluates
    # with "a photo of a {}." everywhere); several are averaged as a prompt ensemble.
    templates: tuple[str, ...] = ("a photo of a {}.",)
    notes: str = ""  # what a user should know when the download fails

    @property
    def downloadable(self) -> bool:
        return bool(self.archives)


def _coop_split(name: str, drive_id: str) -> dict[str, Any]:
    return {"name": name, "urls": [COOP_DRIVE.format(drive_id)]}


_ENTRIES: dict[str, dict[str, Any]] = {
    "ImageNet": {
        "classes": 1000,
        "counts": {"train": None, "val": 50000, "test": 50000},
        "split_kind": "imagenet",
        "image_dir": "images",
        "local_image_dir": "images",
        "folders": ["imagenet"],
        "templates": [
            "itap of a {}.",
            "a bad photo of the {}.",
            "a origami {}.",
            "a photo of the large {}.",
            "a {} in a video game.",
            "art of the {}.",
            "a photo of the small {}.",
        ],
        "notes": "login-only download: create the folder by hand (see complora.data.prepare.IMAGENET_LAYOUT)",
    },
    "Caltech101": {
        "classes": 100,
        "counts": {"train": 4128, "val": 1649, "test": 2465},
        "split_kind": "coop",
        "image_dir": "101_ObjectCategories",
        "local_image_dir": "101_ObjectCategories",
        "folders": ["caltech-101", "Caltech101"],
        "archives": [
            {
                "name": "101_ObjectCategories.tar.gz",
                "urls": [
                    "http://www.vision.caltech.edu/Image_Datasets/Caltech101/101_ObjectCategories.tar.gz",
                    "https://drive.usercontent.google.com/download?id=137RyRjvTBkBiIfeYBNZBtViDHQ6_Ewsp&export=download&confirm=t",
                ],
                "md5": "b224c7392d521a49829488ab0f1120d9",
            }
        ],
        "split_file": _coop_split("split_zhou_Caltech101.json", "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN"),
    },
    "OxfordPets": {
        "classes": 37,
        "counts": {"train": 2944, "val": 736, "test": 3669},
        "split_kind": "coop",
        "image_dir": "images",
        "local_image_dir": "images",
        "folders": ["oxford_pets", "OxfordPets"],
        "archives": [
            {
                "name": "images.tar.gz",
                "urls": ["https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz"],
                "md5": "5c4f3ee8e5d25df40f4fd59a7f44e54c",
            }
        ],
        "split_file": _coop_split("split_zhou_OxfordPets.json", "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs"),
        "templates": ["a photo of a {}, a type of pet."],
    },
    "StanfordCars": {
        "classes": 196,
        "counts": {"train": 6509, "val": 1635, "test": 8041},
        "split_kind": "coop",
        "image_dir": ".",
        "local_image_dir": ".",
        "folders": ["stanford_cars", "StanfordCars"],
        "archives": [
            {
                "name": "cars_train.tgz",
                "urls": [
                    "https://ai.stanford.edu/~jkrause/car196/cars_train.tgz",
                    "http://imagenet.stanford.edu/internal/car196/cars_train.tgz",
                ],
                "md5": "065e5b463ae28d29e77c1b4b166cfe61",
            },
            {
                "name": "cars_test.tgz",
                "urls": [
                    "https://ai.stanford.edu/~jkrause/car196/cars_test.tgz",
                    "http://imagenet.stanford.edu/internal/car196/cars_test.tgz",
                ],
                "md5": "4ce7ebf6a94d07f1952d94dd34c4d501",
            },
        ],
        "split_file": _coop_split("split_zhou_StanfordCars.json", "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT"),
        "notes": "the Stanford hosts are dead since 2023: add a mirror in a registry override, or use data_root",
    },
    "Flowers102": {
        "classes": 102,
        "counts": {"train": 4093, "val": 1633, "test": 2463},
        "split_kind": "coop",
        "image_dir": "jpg",
        "local_image_dir": "jpg",
        "folders": ["oxford_flowers", "Flower102"],
        "archives": [
            {
                "name": "102flowers.tgz",
                "urls": ["https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz"],
                "md5": "52808999861908f626f3c1f4e79d11fa",
            }
        ],
        "split_file": _coop_split("split_zhou_OxfordFlowers.json", "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT"),
        "templates": ["a photo of a {}, a type of flower."],
    },
    "Food101": {
        "classes": 101,
        "counts": {"train": 50500, "val": 20200, "test": 30300},
        "split_kind": "coop",
        "image_dir": "food-101/images",
        "local_image_dir": "images",
        "folders": ["food-101", "Food101"],
        "archives": [
            {
                "name": "food-101.tar.gz",
                "urls": ["http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz"],
                "md5": "85eeb15f3717b99a5da872d97d918f87",
            }
        ],
        "split_file": _coop_split("split_zhou_Food101.json", "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl"),
        "templates": ["a photo of {}, a type of food."],
    },
    "FGVCAircraft": {
        "classes": 100,
        "counts": {"train": 3334, "val": 3333, "test": 3333},
        "split_kind": "fgvc",
        "image_dir": "fgvc-aircraft-2013b/data/images",
        "local_image_dir": "images",
        "folders": ["fgvc_aircraft"],
        "archives": [
            {
                "name": "fgvc-aircraft-2013b.tar.gz",
                "urls": ["https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz"],
            }
        ],
        "templates": ["a photo of a {}, a type of aircraft."],
    },
    "SUN397": {
        "classes": 397,
        "counts": {"train": 15880, "val": 3970, "test": 19850},
        "split_kind": "coop",
        "image_dir": "SUN397",
        "local_image_dir": "SUN397",
        "folders": ["sun397", "SUN397"],
        "archives": [
            {
                "name": "SUN397.tar.gz",
                "urls": ["http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz"],
                "md5": "8ca2778205c41d23104230ba66911c7a",
            }
        ],
        "split_file": _coop_split("split_zhou_SUN397.json", "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq"),
    },
    "DTD": {
        "classes": 47,
        "counts": {"train": 2820, "val": 1128, "test": 1692},
        "split_kind": "coop",
        "image_dir": "dtd/images",
        "local_image_dir": "images",
        "folders": ["dtd", "DTD"],
        "archives": [
            {
                "name": "dtd-r1.0.1.tar.gz",
                "urls": ["https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz"],
                "md5": "fff73e5086ae6bdbea199a49dfb8a4c1",
            }
        ],
        "split_file": _coop_split("split_zhou_DescribableTextures.json", "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x"),
        "templates": ["{} texture."],
    },
    "EuroSAT": {
        "classes": 10,
        "counts": {"train": 13500, "val": 5400, "test": 8100},
        "split_kind": "coop",
        "image_dir": "2750",
        "local_image_dir": "2750",
        "folders": ["eurosat"],
        "archives": [
            {
                "name": "EuroSAT.zip",
                "urls": [
                    "https://huggingface.co/datasets/torchgeo/eurosat/resolve/c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",
                    "http://madm.dfki.de/files/sentinel/EuroSAT.zip",
                ],
                "md5": "c8fa014336c82ac7804f0398fcb19387",
            }
        ],
        "split_file": _coop_split("split_zhou_EuroSAT.json", "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o"),
        "templates": ["a centered satellite photo of {}."],
    },
    "UCF101": {
        "classes": 101,
        "counts": {"train": 7639, "val": 1898, "test": 3783},
        "split_kind": "coop",
        "image_dir": "UCF-101-midframes",
        "local_image_dir": "UCF-101-midframes",
        "folders": ["ucf101", "UCF101"],
        "archives": [
            {
                "name": "UCF-101-midframes.zip",
                "urls": [COOP_DRIVE.format("10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O")],
            }
        ],
        "split_file": _coop_split("split_zhou_UCF101.json", "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y"),
        "templates": ["a photo of a person doing {}."],
    },
}
PAPER_DATASETS = tuple(_ENTRIES)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if nested else value
    return merged


def _remote(data: dict[str, Any] | None) -> RemoteFile | None:
    if data is None:
        return None
    return RemoteFile(data["name"], tuple(data["urls"]), data.get("md5"), data.get("sha256"))


def _spec(name: str, data: dict[str, Any]) -> DatasetSpec:
    fields = dict(data)
    archives = tuple(_remote(archive) for archive in fields.pop("archives", []))
    split_file = _remote(fields.pop("split_file", None))
    fields["folders"] = tuple(fields["folders"])
    if "templates" in fields:
        fields["templates"] = tuple(fields["templates"])
    return DatasetSpec(name=name, archives=archives, split_file=split_file, **fields)


def load_registry(override: str | os.PathLike[str] | None = None) -> dict[str, DatasetSpec]:
    """The built-in entries, with a YAML file's entries merged over them (new datasets or changed fields)."""
    entries = _ENTRIES
    if override is not None:
        path = Path(override)
        try:
            extra = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ComploraError(f"dataset registry override {path} cannot be read ({error})") from error
        if not isinstance(extra, dict) or not all(isinstance(value, dict) for value in extra.values()):
            raise ComploraError(f"dataset registry override {path}: expected a mapping of dataset names to fields")
        entries = {name: _merge(entries.get(name, {}), value) for name, value in {**entries, **extra}.items()}
    try:
        return {name: _spec(name, data) for name, data in entries.items()}
    except (KeyError, TypeError) as error:
        source = f"dataset registry override {override}" if override else "the dataset registry"
        raise ComploraError(f"{source}: an entry lacks a field or has a wrong one ({error!r})") from None
