"""What decides that a job is done: a run's recorded request against today's, the split and the weights; an
artifact's seal (its request, each file's size and sha256), read without writing anything."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from complora.aggregate import aggregate
from complora.artifacts import seal, seal_path, verify_artifact, verify_file
from complora.errors import ComploraError
from complora.runrequest import artifact_verdict, differences, run_verdict, stale_reasons

REQUEST = {"method": "lora", "hyperparameters": {"learning_rate": 0.0002, "rank": 2}, "code": "abc"}
WEIGHTS = "ab" * 32


def record(request: dict | None = REQUEST, split: str = "s1", weights: str = WEIGHTS) -> dict:
    run = {"split_hash": split, "backbone": {"weights_sha256": weights}}
    return run if request is None else {**run, "request": request}


def test_differences_name_every_changed_key():
    changed = {**REQUEST, "hyperparameters": {"learning_rate": 0.001, "rank": 2, "alpha": 2}, "code": "def"}
    assert differences(REQUEST, changed) == [
        'code: "abc" → "def"',
        "hyperparameters.alpha: (not recorded) → 2",
        "hyperparameters.learning_rate: 0.0002 → 0.001",
    ]
    assert differences(changed, REQUEST)[1] == "hyperparameters.alpha: 2 → (no longer asked)"
    assert differences(REQUEST, json.loads(json.dumps(REQUEST))) == []


def test_stale_reasons():
    assert stale_reasons(record(), REQUEST, split_sha256="s1", weights_sha256=WEIGHTS) == []
    assert stale_reasons(record(), REQUEST) == [], "split and weights unknown yet: not judged"
    assert stale_reasons(record(None), REQUEST) == ["it records no request (made by an older complora)"]
    assert stale_reasons(record(), REQUEST, split_sha256="s2")[0].startswith("split: made from split s1")
    assert stale_reasons(record(weights="cd" * 32), REQUEST, weights_sha256=WEIGHTS)[0].startswith("weights:")


def test_a_runs_verdict_is_read_from_its_metrics_file_alone(tmp_path: Path):
    metrics = tmp_path / "run" / "metrics.json"
    assert run_verdict(REQUEST, metrics, None, None) == [], "no run yet: the job runs anyway"
    metrics.parent.mkdir()
    metrics.write_text(json.dumps(record()))
    before = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*")}
    assert run_verdict(REQUEST, metrics, "s1", WEIGHTS) == []
    changed = {**REQUEST, "hyperparameters": {"learning_rate": 0.001, "rank": 2}}
    assert run_verdict(changed, metrics, "s1", WEIGHTS) == ["hyperparameters.learning_rate: 0.0002 → 0.001"]
    assert run_verdict(REQUEST, metrics, "s2", WEIGHTS), "a new split makes the run stale too"
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*")} == before, "judging writes nothing"
    metrics.write_text("{not json")
    assert run_verdict(REQUEST, metrics, None, None) == ["its metrics.json is damaged (not a JSON object)"]


def test_aggregate_refuses_stale_runs_naming_them_and_the_fix(tmp_path: Path):
    backbone = {"model": "m", "pretrained": "w", "weights_sha256": WEIGHTS}
    split = tmp_path / "split.json"
    split.write_text("{}")
    split_sha = hashlib.sha256(b"{}").hexdigest()
    paths, requests = [], {}
    for seed in (1, 2):
        run = {"dataset": "A", "method": "lora", "family": "lora", "shots": 1, "seed": seed, "accuracy": 50.0,
               "retention": {}, "backbone": backbone, "config_hash": "c", "split_hash": split_sha,
               "data": {"few_shot": str(split)}, "request": REQUEST}  # fmt: skip
        path = tmp_path / f"runs/A/lora/shots1/seed{seed}/metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(run))
        paths.append(path)
        requests[str(path)] = REQUEST
    requests_file = tmp_path / "requests.json"
    requests_file.write_text(json.dumps(requests))
    metadata = tmp_path / "metadata.json"
    metadata.write_text(json.dumps({"weights_sha256": WEIGHTS}))
    aggregate(paths, tmp_path / "out", requests=requests_file, model_metadata=metadata)
    assert (tmp_path / "out" / "tables" / "runs.csv").is_file()

    requests[str(paths[1])] = {**REQUEST, "hyperparameters": {"learning_rate": 0.001, "rank": 2}}
    requests_file.write_text(json.dumps(requests))
    with pytest.raises(ComploraError) as error:
        aggregate(paths, tmp_path / "stale", requests=requests_file, model_metadata=metadata)
    message = str(error.value)
    assert "1 run(s) were made with other settings" in message and "seed2" in message and "seed1" not in message
    assert "hyperparameters.learning_rate: 0.0002 → 0.001" in message and "redoes stale runs" in message
    assert not (tmp_path / "stale").exists(), "nothing written"

    requests[str(paths[1])] = REQUEST
    requests_file.write_text(json.dumps(requests))
    split.write_text('{"changed": true}')
    with pytest.raises(ComploraError, match="split: made from split"):
        aggregate(paths, tmp_path / "stale", requests=requests_file, model_metadata=metadata)
    requests_file.write_text(json.dumps({str(paths[0]): REQUEST}))
    with pytest.raises(ComploraError, match="holds no request for"):
        aggregate(paths, tmp_path / "stale", requests=requests_file)


def test_an_artifact_is_judged_by_its_seal(tmp_path: Path):
    artifact = tmp_path / "splits" / "shots1_seed1.json"
    assert seal_path(artifact).name == "shots1_seed1.request.json"
    assert seal_path("resources/models/ViT-B-16_x.v2").name == "ViT-B-16_x.v2.request.json"
    assert artifact_verdict(REQUEST, artifact) == [], "not made yet: its job runs anyway"
    artifact.parent.mkdir()
    artifact.write_text('{"train": []}')
    assert artifact_verdict(REQUEST, artifact) == [
        "it was never sealed (its job did not finish, or an older complora made it)"
    ]
    seal(artifact, REQUEST)
    assert artifact_verdict(REQUEST, artifact) == []
    assert artifact_verdict({**REQUEST, "code": "def"}, artifact) == ['code: "abc" → "def"']
    artifact.write_text('{"train": [1]}')
    assert artifact_verdict(REQUEST, artifact) == [f"{artifact} has 14 bytes, 13 when it was made"]
    artifact.write_text('{"train": []]')
    assert artifact_verdict(REQUEST, artifact) == [f"{artifact} is damaged: its content differs from when it was made"]
    assert artifact_verdict(REQUEST, artifact, deep=False) == [], "a shallow check reads the seal alone"
    artifact.unlink()
    assert artifact_verdict(REQUEST, artifact) == [f"{artifact} is missing"]
    seal_path(artifact).write_text("{broken")
    assert artifact_verdict(REQUEST, artifact) == ["its seal is unreadable"]


def test_a_folders_seal_lists_its_files_and_readers_verify_them(tmp_path: Path):
    folder = tmp_path / "store"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"abc")
    (folder / "sub" / "b.bin").write_bytes(b"de")
    (folder / ".snakemake_timestamp").write_text("")
    seal(folder, REQUEST)
    record = json.loads(seal_path(folder).read_text())
    assert sorted(record["files"]) == ["a.bin", "sub/b.bin"], "Snakemake's timestamp is no part of it"
    assert record["files"]["a.bin"] == {"size": 3, "sha256": hashlib.sha256(b"abc").hexdigest()}
    verify_artifact(folder)
    verify_file(folder / "a.bin")
    (folder / "a.bin").write_bytes(b"abd")  # one flipped byte, same size
    with pytest.raises(ComploraError, match=r"damaged .*snakemake --cores all --forcerun .*store"):
        verify_file(folder / "a.bin")
    with pytest.raises(ComploraError, match=r"a\.bin is damaged"):
        verify_artifact(folder)
    verify_file(folder / "sub" / "b.bin")
    (folder / "extra").write_text("x")
    assert artifact_verdict(REQUEST, folder)[-1] == f"{folder}/extra was not made by its job"
