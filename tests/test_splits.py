"""k-shot split files: the CoOp convention, byte-identical per seed, portable paths, clear errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from complora.cli import main
from complora.data.splits import few_shot_split, read_few_shot_split, sample_few_shot, write_few_shot_split
from complora.errors import ComploraError


@pytest.fixture
def split_file(tmp_path: Path) -> Path:
    """Class 0 has 10 train items, class 1 only 2 (so 4 shots must repeat some); 6 val items each."""
    train = [[f"a/train_{i}.png", 0, "apple"] for i in range(10)] + [[f"b/train_{i}.png", 1, "pear"] for i in range(2)]
    val = [[f"a/val_{i}.png", 0, "apple"] for i in range(6)] + [[f"b/val_{i}.png", 1, "pear"] for i in range(6)]
    test = [["a/test_0.png", 0, "apple"], ["b/test_0.png", 1, "pear"]]
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": train, "val": val, "test": test}))
    return path


def test_coop_convention(split_file: Path):
    split = few_shot_split(split_file, "fruit", shots=4, seed=1)
    train = Counter(label for _, label, _ in split["train"])
    val = Counter(label for _, label, _ in split["val"])
    assert train == {0: 4, 1: 4} and val == {0: 4, 1: 4}
    apples = [path for path, label, _ in split["train"] if label == 0]
    assert len(set(apples)) == 4, "a class with enough items is sampled without replacement"
    assert len({path for path, label, _ in split["train"] if label == 1}) <= 2
    assert Counter(label for _, label, _ in few_shot_split(split_file, "fruit", 8, 1)["val"]) == {0: 4, 1: 4}
    assert Counter(label for _, label, _ in few_shot_split(split_file, "fruit", 1, 1)["val"]) == {0: 1, 1: 1}
    # One generator: train first, then val, as CoOp seeds once and draws in that order.
    train_only = sample_few_shot([tuple(e) for e in json.loads(split_file.read_text())["train"]], 4, 1)
    assert [tuple(entry) for entry in split["train"]] == train_only
    assert split["classnames"] == ["apple", "pear"]
    assert all(not Path(path).is_absolute() for path, _, _ in split["train"] + split["val"])


def test_same_seed_same_bytes_other_seed_other_split(split_file: Path, tmp_path: Path):
    for name in ("one.json", "two.json"):
        write_few_shot_split(few_shot_split(split_file, "fruit", 4, seed=2), tmp_path / name)
    write_few_shot_split(few_shot_split(split_file, "fruit", 4, seed=3), tmp_path / "other.json")
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()
    assert (tmp_path / "one.json").read_bytes() != (tmp_path / "other.json").read_bytes()
    loaded = read_few_shot_split(tmp_path / "one.json")
    assert loaded["shots"] == 4 and loaded["seed"] == 2 and loaded["dataset"] == "fruit"
    assert len(loaded["source_split"]["sha256"]) == 64


def test_cli_writes_the_split_and_refuses_bad_input(split_file: Path, tmp_path: Path, capsys):
    out = tmp_path / "splits" / "fruit" / "shots2_seed1.json"
    assert main(["split", "--split-file", str(split_file), "--dataset", "fruit", "--shots", "2", "--seed", "1",
                 "--out", str(out)]) == 0  # fmt: skip
    assert read_few_shot_split(out)["train"] == [tuple(e) for e in few_shot_split(split_file, "fruit", 2, 1)["train"]]
    assert main(["split", "--split-file", str(split_file), "--dataset", "fruit", "--shots", "0", "--seed", "1",
                 "--out", str(tmp_path / "bad.json")]) == 2  # fmt: skip
    assert "shots must be 1 or more" in capsys.readouterr().err
    assert not (tmp_path / "bad.json").exists()


def test_errors_name_the_file(tmp_path: Path, split_file: Path):
    with pytest.raises(ComploraError, match="does not exist"):
        few_shot_split(tmp_path / "missing.json", "x", 1, 1)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"train": [], "val": [], "test": []}))
    with pytest.raises(ComploraError, match="'train' list is empty"):
        few_shot_split(empty, "x", 1, 1)
    with pytest.raises(ComploraError, match="seed must be 0 or more"):
        few_shot_split(split_file, "x", 1, -1)
    with pytest.raises(ComploraError, match="not a k-shot split file"):
        read_few_shot_split(split_file)
