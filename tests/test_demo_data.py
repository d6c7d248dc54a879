"""The demo world's downstream datasets: on-disk form, determinism, and content that matches the labels."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from complora.demo.datasets import DemoSizes, write_demo_world
from complora.demo.tasks import TASKS
from complora.demo.world import caption, sample_scene
from complora.errors import ComploraError

SMALL = DemoSizes(train_per_class=3, val_per_class=1, test_per_class=2, image_size=24)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_world(tmp_path_factory.mktemp("demo") / "world", seed=3, sizes=SMALL)


def test_tasks_are_readable_classification_problems():
    assert len(TASKS) >= 4
    assert {task.coverage for task in TASKS.values()} >= {"captioned", "rare", "shifted"}
    for task in TASKS.values():
        assert len(task.classnames) >= 5 and len(set(task.classnames)) == len(task.classnames)


def test_captions_rarely_name_the_rare_concepts():
    rng = np.random.default_rng(0)

    def share_naming(word: str, **fixed: str) -> float:
        return sum(word in caption(sample_scene(rng, **fixed), rng) for _ in range(2000)) / 2000

    assert share_naming("red", color="red") > 0.7
    assert share_naming("pink", color="pink") < 0.06
    assert 0.06 < share_naming("striped", pattern="striped") < 0.2
    assert all("night" not in caption(sample_scene(rng), rng) for _ in range(200))


def test_every_task_is_written_in_coop_form(world):
    manifest = json.loads((world / "world.json").read_text())
    assert manifest["seed"] == 3 and set(manifest["tasks"]) == set(TASKS)
    for name, task in TASKS.items():
        folder = world / name
        split = json.loads((folder / "split.json").read_text())
        classnames = (folder / "classnames.txt").read_text().splitlines()
        captions = json.loads((folder / "captions.json").read_text())
        assert classnames == list(task.classnames)
        assert (
            manifest["tasks"][name]["split_sha256"] == hashlib.sha256((folder / "split.json").read_bytes()).hexdigest()
        )
        for split_name in ("train", "val", "test"):
            entries = split[split_name]
            assert len(entries) == len(classnames) * SMALL.per_class(split_name)
            for relpath, label, classname in entries:
                assert classnames[label] == classname
                with Image.open(folder / relpath) as image:
                    assert image.size == (24, 24) and image.mode == "RGB"
                assert captions[relpath].endswith(".")
        all_paths = [entry[0] for entries in split.values() for entry in entries]
        assert len(set(all_paths)) == len(all_paths), "splits never share an image"


def test_same_seed_gives_identical_bytes_and_other_seed_differs(world, tmp_path):
    again = write_demo_world(tmp_path / "again", seed=3, sizes=SMALL)
    assert tree_digest(again) == tree_digest(world)
    other = write_demo_world(tmp_path / "other", seed=4, sizes=SMALL)
    assert (
        tree_digest(other)["demo_shapes/images/circle/test_0000.png"]
        != tree_digest(world)["demo_shapes/images/circle/test_0000.png"]
    )


def test_images_show_their_label(world):
    def pixels(task: str, classname: str) -> np.ndarray:
        folder = world / task / "images" / classname.replace(" ", "_")
        return np.stack([np.asarray(Image.open(path), dtype=np.float64) for path in sorted(folder.glob("*.png"))])

    # Night renders are darker than day renders of the same classes.
    assert pixels("demo_night_shapes", "circle").mean() < 0.7 * pixels("demo_shapes", "circle").mean()
    # Snow backgrounds are brighter than water ones; red shapes are redder than blue ones.
    assert pixels("demo_scenes", "shape in the snow").mean() > pixels("demo_scenes", "shape on water").mean() + 40
    red, blue = pixels("demo_colors", "red shape"), pixels("demo_colors", "blue shape")
    assert (red[..., 0] - red[..., 2]).mean() > (blue[..., 0] - blue[..., 2]).mean() + 10


def test_existing_output_is_refused_and_bad_sizes_named(world, tmp_path):
    with pytest.raises(ComploraError, match="already exists"):
        write_demo_world(world, sizes=SMALL)
    with pytest.raises(ComploraError, match="train-per-class: must be at least 1"):
        DemoSizes(train_per_class=0)


def test_cli_writes_the_world(tmp_path):
    out = tmp_path / "demo"
    args = ["--out", str(out), "--train-per-class", "2", "--val-per-class", "1", "--test-per-class", "1"]
    result = subprocess.run(
        [sys.executable, "-m", "complora.cli", "demo-data", *args, "--image-size", "16"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "world.json").read_text())["sizes"]["image_size"] == 16
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")], "no staging folder left behind"
