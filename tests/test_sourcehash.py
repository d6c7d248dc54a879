"""Code fingerprints per entry module: what each workflow rule's jobs rerun on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from complora import sourcehash
from complora.sourcehash import source_files, source_fingerprint


def names(*modules: str) -> set[str]:
    return {str(path.relative_to(sourcehash.PACKAGE_ROOT)) for path in source_files(*modules)}


def test_closures_follow_imports_including_function_level_ones():
    training = names("complora.experiment")
    assert {
        "experiment.py",
        "finetune.py",
        "adapters/layer.py",
        "subspace.py",
        "data/splits.py",
        "data/images.py",
    } <= training
    assert "model_configs/demo-vit-tiny.json" in training, "the registered architectures are code too"
    assert {"__init__.py", "adapters/__init__.py"} <= training
    aggregation = names("complora.aggregate")
    assert "aggregate.py" in aggregation and "finetune.py" not in aggregation and "experiment.py" not in aggregation
    assert names("complora.data.splits") == {
        "__init__.py",
        "artifacts.py",
        "atomic.py",
        "errors.py",
        "data/__init__.py",
        "data/base_to_new.py",
        "data/splits.py",
    }
    assert "cli.py" not in names("complora.demo.pretrain")


def test_fingerprint_changes_exactly_when_the_closure_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    copy = tmp_path / "complora"
    shutil.copytree(sourcehash.PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(sourcehash, "PACKAGE_ROOT", copy)
    monkeypatch.setattr(sourcehash, "DATA_FILES", {"complora.models": sorted((copy / "model_configs").glob("*.json"))})
    before = {module: source_fingerprint(module) for module in ("complora.experiment", "complora.aggregate")}
    assert before == {module: source_fingerprint(module) for module in before}
    with (copy / "finetune.py").open("a") as handle:
        handle.write("\n# an edit\n")
    after = {module: source_fingerprint(module) for module in before}
    assert after["complora.experiment"] != before["complora.experiment"]
    assert after["complora.aggregate"] == before["complora.aggregate"]


def test_unknown_module_is_refused():
    with pytest.raises(ValueError, match="not a module"):
        source_fingerprint("complora.nonexistent")
