"""What decides that a run is done: its recorded request against today's, the split and the weights, and
the request file's time that carries the verdict to Snakemake (the epoch while answered, now while stale)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from complora.aggregate import aggregate
from complora.errors import ComploraError
from complora.runrequest import (
    ANSWERED,
    answered_path,
    differences,
    request_path,
    settle_artifact,
    settle_run,
    stale_reasons,
)

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


def test_settle_writes_the_request_and_times_it_by_the_verdict(tmp_path: Path):
    request_file, metrics = tmp_path / "requests" / "run.json", tmp_path / "run" / "metrics.json"
    assert settle_run(request_file, REQUEST, metrics, None, None) == [], "no run yet: the job runs anyway"
    assert json.loads(request_file.read_text()) == REQUEST and request_file.stat().st_mtime > ANSWERED
    metrics.parent.mkdir()
    metrics.write_text(json.dumps(record()))
    assert settle_run(request_file, REQUEST, metrics, "s1", WEIGHTS) == []
    assert request_file.stat().st_mtime == ANSWERED, "answered: older than any run, Snakemake leaves it alone"
    changed = {**REQUEST, "hyperparameters": {"learning_rate": 0.001, "rank": 2}}
    reasons = settle_run(request_file, changed, metrics, "s1", WEIGHTS)
    assert reasons == ["hyperparameters.learning_rate: 0.0002 → 0.001"]
    assert json.loads(request_file.read_text()) == changed
    assert request_file.stat().st_mtime > metrics.stat().st_mtime - 1, "stale: newer than the run, so it is redone"
    os.utime(request_file, (ANSWERED, ANSWERED))
    assert settle_run(request_file, REQUEST, metrics, "s2", WEIGHTS), "a new split makes the run stale too"
    assert request_file.stat().st_mtime > ANSWERED
    metrics.write_text("{not json")
    assert settle_run(request_file, REQUEST, metrics, None, None) == ["its metrics.json is not a JSON object"]


def test_request_paths_mirror_the_run_folders():
    assert (
        request_path("results/runs/A/lora/shots4/seed1/metrics.json") == "resources/requests/A/lora/shots4/seed1.json"
    )
    assert request_path("results/runs/A/zeroshot/metrics.json") == "resources/requests/A/zeroshot.json"


def test_aggregate_refuses_stale_runs_naming_them_and_the_fix(tmp_path: Path):
    backbone = {"model": "m", "pretrained": "w", "weights_sha256": WEIGHTS}
    split = tmp_path / "split.json"
    split.write_text("{}")
    split_sha = hashlib.sha256(b"{}").hexdigest()
    paths, requests = [], []
    for seed in (1, 2):
        run = {"dataset": "A", "method": "lora", "family": "lora", "shots": 1, "seed": seed, "accuracy": 50.0,
               "retention": {}, "backbone": backbone, "config_hash": "c", "split_hash": split_sha,
               "data": {"few_shot": str(split)}, "request": REQUEST}  # fmt: skip
        path = tmp_path / f"runs/A/lora/shots1/seed{seed}/metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(run))
        request = tmp_path / f"requests/{seed}.json"
        request.parent.mkdir(exist_ok=True)
        request.write_text(json.dumps(REQUEST))
        paths.append(path)
        requests.append(request)
    metadata = tmp_path / "metadata.json"
    metadata.write_text(json.dumps({"weights_sha256": WEIGHTS}))
    aggregate(paths, tmp_path / "out", requests=requests, model_metadata=metadata)
    assert (tmp_path / "out" / "tables" / "runs.csv").is_file()

    requests[1].write_text(json.dumps({**REQUEST, "hyperparameters": {"learning_rate": 0.001, "rank": 2}}))
    with pytest.raises(ComploraError) as error:
        aggregate(paths, tmp_path / "stale", requests=requests, model_metadata=metadata)
    message = str(error.value)
    assert "1 run(s) were made with other settings" in message and "seed2" in message and "seed1" not in message
    assert "hyperparameters.learning_rate: 0.0002 → 0.001" in message and "redoes stale runs" in message
    assert not (tmp_path / "stale").exists(), "nothing written"

    requests[1].write_text(json.dumps(REQUEST))
    split.write_text('{"changed": true}')
    with pytest.raises(ComploraError, match="split: made from split"):
        aggregate(paths, tmp_path / "stale", requests=requests, model_metadata=metadata)
    with pytest.raises(ComploraError, match="2 request files for 1 metrics"):
        aggregate(paths[:1], tmp_path / "stale", requests=requests)


def test_an_artifact_is_judged_by_the_request_it_recorded(tmp_path: Path):
    request_file, artifact = tmp_path / "requests" / "split.json", tmp_path / "splits" / "shots1_seed1.json"
    answered = Path(answered_path(str(artifact), directory=False))
    assert answered.name == "shots1_seed1.request.json"
    assert (
        answered_path("resources/models/ViT-B-16_x.v2", directory=True) == "resources/models/ViT-B-16_x.v2.request.json"
    )
    assert settle_artifact(request_file, REQUEST, answered) == [], "not made yet: its job runs anyway"
    answered.parent.mkdir()
    answered.write_text(json.dumps(REQUEST))  # what the job copies when it succeeds
    assert settle_artifact(request_file, REQUEST, answered) == []
    assert request_file.stat().st_mtime == answered.stat().st_mtime == ANSWERED, "both timeless while answered"
    changed = {**REQUEST, "code": "def"}
    assert settle_artifact(request_file, changed, answered) == ['code: "abc" → "def"']
    assert request_file.stat().st_mtime > answered.stat().st_mtime, "the request is newer: the job is redone"
    answered.write_text("{broken")
    assert settle_artifact(request_file, changed, answered) == ["its request record is unreadable"]


def test_a_zero_shot_runs_record_is_timed_with_its_request(tmp_path: Path):
    request_file, metrics = tmp_path / "request.json", tmp_path / "run" / "metrics.json"
    answered = tmp_path / "run" / "metrics.request.json"
    metrics.parent.mkdir()
    metrics.write_text(json.dumps(record()))
    answered.write_text(json.dumps(REQUEST))
    assert settle_run(request_file, REQUEST, metrics, "s1", WEIGHTS, answered) == []
    assert answered.stat().st_mtime == ANSWERED, "the runs reading this one see it as old as anything"
