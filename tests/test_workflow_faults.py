"""Faults a careful user meets, on copies of the one finished reduced study (the session's `demo`): dry runs
that must change nothing, damaged or deleted artifacts that the next `snakemake` rebuilds with everything made
from them (with and without Snakemake's records), a study that leaves out 16 shots merged over the shipped
config, settings the backbone cannot hold, and user values with shell syntax in them.

Marked slow: the damage test reruns part of the reduced study (about a minute on 2 cores).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from complora.configcheck import check_config, load_schema
from complora.errors import ComploraError
from workflow_project import REDUCED, ROOT, make_project, run

pytestmark = pytest.mark.slow

SPLIT = "resources/splits/demo_patterns/shots1_seed1.json"
ZERO_SHOT = "results/runs/demo_patterns/zeroshot/metrics.json"
MODEL = "resources/models/demo-vit-tiny/open_clip_model.safetensors"
CACHE = "resources/evalcache/demo_rare_colors/demo-vit-tiny/pixels.npy"
DELETED_RUN = "results/runs/demo_rare_colors/lora/shots2"


def snapshot(project: Path) -> dict[str, tuple[int, int]]:
    """Every file of a project but Snakemake's own records, by (mtime, size)."""
    return {
        str(path.relative_to(project)): (path.stat().st_mtime_ns, path.stat().st_size)
        for path in project.rglob("*")
        if path.is_file() and ".snakemake" not in path.parts
    }


def copy_of(demo: Path, tmp_path: Path, records: bool = True) -> Path:
    project = tmp_path / "project"
    shutil.copytree(demo, project, symlinks=True, ignore=None if records else shutil.ignore_patterns(".snakemake"))
    return project


def test_a_dry_run_a_lint_and_another_config_change_no_file(demo: Path, tmp_path: Path):
    project = copy_of(demo, tmp_path)
    other = tmp_path / "lr.yaml"
    other.write_text(yaml.safe_dump({"hyperparameters": {"lora": {"learning_rate": 0.001}}}))
    before = snapshot(project)
    dry = run(project, "snakemake", "-n", "--configfile", "config.yaml", str(other))
    assert dry.returncode == 0 and "finished job(s) are stale" in dry.stdout + dry.stderr
    assert run(project, "snakemake", "--lint").returncode == 0
    assert snapshot(project) == before, "a dry run with another config relabelled nothing"
    assert "Nothing to be done" in run(project, "snakemake", "-n").stdout


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_and_deleted_artifacts_are_rebuilt_with_what_was_made_from_them(demo: Path, tmp_path: Path):
    project = copy_of(demo, tmp_path)
    split = project / SPLIT
    split.write_bytes(split.read_bytes()[:100])  # truncated
    (project / ZERO_SHOT).write_text("garbage")  # unreadable run
    _flip_byte(project / CACHE, 1000)  # same size, other pixels
    shutil.rmtree(project / DELETED_RUN)
    causes = {
        SPLIT: "has 100 bytes",
        "results/runs/demo_patterns/zeroshot": "its metrics.json is damaged",
        "resources/evalcache/demo_rare_colors/demo-vit-tiny": "pixels.npy is damaged",
        f"{DELETED_RUN}/seed1": "it is missing",
    }
    plans = []
    for records in (True, False):  # with Snakemake's records, then as after `dvc pull` (none)
        if not records:
            shutil.rmtree(project / ".snakemake")
        dry = run(project, "snakemake", "-n")
        output = dry.stdout + dry.stderr
        for made, cause in causes.items():
            line = next((line for line in output.splitlines() if line.startswith(f"  {made}: ")), "")
            assert cause in line, (made, output[-3000:])
        plans.append(re.findall(r"^rule (\w+):", dry.stdout, re.MULTILINE))
    assert sorted(plans[0]) == sorted(plans[1]), "the same jobs with and without Snakemake's records"
    result = run(project, "snakemake", "--cores", "2")
    assert result.returncode == 0, result.stderr[-5000:]
    assert "Nothing to be done" in run(project, "snakemake", "-n").stdout
    for name in ("accuracy.csv", "retention.csv", "comparisons.csv"):  # runs.csv also holds wall times
        assert (project / "results/tables" / name).read_bytes() == (demo / "results/tables" / name).read_bytes()
    assert not (project / "resources/redo").exists(), "the redo markers are gone"


def test_a_bit_flip_in_the_weights_rebuilds_the_model_and_everything_after_it(demo: Path, tmp_path: Path):
    project = copy_of(demo, tmp_path, records=False)
    _flip_byte(project / MODEL, 5000)
    dry = run(project, "snakemake", "-n")
    output = dry.stdout + dry.stderr
    assert "resources/models/demo-vit-tiny: " in output and "is damaged" in output, output[-3000:]
    assert "demo_pretrain" in dry.stdout and "projector" in dry.stdout and "train" in dry.stdout


def test_a_study_without_16_shots_runs_over_the_shipped_config(tmp_path: Path):
    project = make_project(tmp_path / "project", yaml.safe_load((ROOT / "config.yaml").read_text()))
    shutil.copytree(ROOT / "tests" / "workflow", project / "tests" / "workflow")
    result = run(project, "snakemake", "-n", "--cores", "2", "--configfile", "tests/workflow/reduced_config.yaml")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    user = tmp_path / "one_shot.yaml"
    user.write_text(yaml.safe_dump({"shots": [1], "methods": ["zeroshot", "lora", "coop4"]}))
    refused = run(project, "snakemake", "-n", "--configfile", str(user))
    assert refused.returncode != 0
    assert "hyperparameters.coop4.shots: [16] leaves coop4 nothing to run" in refused.stdout + refused.stderr


def test_settings_the_backbone_cannot_hold_are_refused_naming_the_key():
    schema = load_schema(ROOT / "workflow" / "schemas" / "config.schema.yaml")
    config = {**REDUCED, "hyperparameters": {"complora": {"k": 129}, "lora": {"rank": 200}}}
    with pytest.raises(ComploraError) as error:
        check_config(config, schema)
    message = str(error.value)
    assert "hyperparameters.complora.k: 129 is above the rank" in message and "128 x 128" in message
    assert "hyperparameters.lora.rank: 200" in message


def test_user_values_reach_the_shell_quoted(tmp_path: Path):
    project = make_project(tmp_path / "project", REDUCED)
    images = tmp_path / "my images; $(touch INJECTED) 'q'"
    images.mkdir()
    config = {
        **REDUCED,
        "datasets": ["mine"],
        "retention_datasets": ["mine"],
        "custom_datasets": {"mine": {"images": str(images)}},
        "prompt_template": "a photo of a {}; $(touch INJECTED2)",
    }
    (project / "config.yaml").write_text(yaml.safe_dump(config))
    result = run(project, "snakemake", "-n", "-p")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    line = next(line for line in result.stdout.splitlines() if "complora custom-dataset" in line)
    assert "--images '" in line, line
    run(project, "bash", "-c", line.strip())  # the printed command, as the shell runs it
    assert not (project / "INJECTED").exists() and not (project / "INJECTED2").exists()


def test_editing_a_custom_datasets_files_prepares_it_again(tmp_path: Path):
    images = tmp_path / "pets"
    for label, name in enumerate(("cat", "dog")):
        (images / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (80 * label, 40 * i, 0)).save(images / name / f"{i}.png")
    names = tmp_path / "names.txt"
    names.write_text("house cat\nhound\n")
    custom = {"mine": {"images": str(images), "classnames": str(names)}}
    config = {**REDUCED, "datasets": ["mine"], "retention_datasets": ["mine"], "custom_datasets": custom}
    project = make_project(tmp_path / "project", config)
    first = run(project, "snakemake", "--cores", "1", "resources/data/mine")
    assert first.returncode == 0, first.stderr[-3000:]
    dry = run(project, "snakemake", "-n")
    assert "resources/data/mine:" not in dry.stdout + dry.stderr, "prepared and sealed"
    edits = {
        "content.classnames": lambda: names.write_text("kitten\nhound\n"),
        "content.images": lambda: (images / "dog" / "4.png").write_bytes(b"x"),
    }
    for key, edit in edits.items():
        edit()
        dry = run(project, "snakemake", "-n")
        line = next((line for line in dry.stdout.splitlines() if "resources/data/mine: " in line), "")
        assert f"{key}: " in line, dry.stdout[-3000:]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("shots: [1, 2\nseeds: [1]\n", "config file config.yaml, line 2, column 6: expected ',' or ']'"),
        ("", "config file config.yaml is empty; it must map setting names to values"),
        ("- lora\n- complora\n", "config file config.yaml is a list; it must map setting names to values"),
    ],
    ids=["bad-yaml", "empty", "a-list"],
)
def test_a_broken_config_file_is_one_message_naming_file_and_line(tmp_path: Path, text: str, message: str):
    project = make_project(tmp_path / "project", REDUCED)
    (project / "config.yaml").write_text(text)
    result = run(project, "snakemake", "-n")
    assert result.returncode != 0 and message in result.stdout + result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
