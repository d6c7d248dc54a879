"""The reduced demo study on a real SLURM cluster: one node, 2 fake GPUs, submitted through profiles/slurm.

Needs Debian's slurm-wlm and munge (`.ci/run` installs them) and root: without them these tests are skipped,
unless COMPLORA_REQUIRE_SLURM=1 (as in CI), which turns the skip into a failure. Marked slow and slurm.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from slurm_cluster import Cluster, slurm_cluster, unavailable_reason
from workflow_project import ENV, REDUCED, ROOT, make_project, run

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

CONFIG = {**REDUCED, "gpus_per_training_job": 1}
TRAINED = ("lora", "complora")
ITERATIONS = 400  # the preempted run's: long enough (~10 s of training) to be requeued part-way


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reason = unavailable_reason()
    if reason:
        if os.environ.get("COMPLORA_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    with slurm_cluster(tmp_path_factory.mktemp("slurm"), gpus=2) as running:
        yield running


def site_profile(directory: Path, cluster: Cluster) -> Path:
    """profiles/slurm with its SITE entries edited for this cluster, as the README tells a user to."""
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    profile["default-resources"]["slurm_partition"] = cluster.partition
    profile["slurm-status-command"] = "squeue"  # no accounting on this cluster
    profile["slurm-init-seconds-before-status-checks"] = 5
    for resources in (profile["default-resources"], *profile["set-resources"].values()):
        resources["mem_mb"] = 2000  # the test node's memory and cores, not a GPU server's
    profile["set-threads"] = {rule: 1 for rule in profile["set-threads"]}
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(profile))
    return directory


@pytest.fixture(scope="module")
def submitted(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The reduced study, every job but the few local rules submitted to SLURM."""
    root = tmp_path_factory.mktemp("slurm-study")
    project = make_project(root / "project", CONFIG)
    profile = site_profile(root / "profile", cluster)
    result = run(project, "snakemake", "--profile", str(profile))
    assert result.returncode == 0, result.stderr[-5000:]
    return project, profile


def run_metrics(project: Path) -> dict[tuple[str, str, int], dict]:
    return {
        (dataset, method, shots): json.loads(
            (project / f"results/runs/{dataset}/{method}/shots{shots}/seed1/metrics.json").read_text()
        )
        for dataset in CONFIG["datasets"]
        for method in TRAINED
        for shots in CONFIG["shots"]
    }


def test_every_training_job_ran_as_a_slurm_job_given_a_gpu(submitted: tuple[Path, Path], cluster: Cluster):
    project, _ = submitted
    job_ids = set()
    for cell, metrics in run_metrics(project).items():
        environment = metrics["environment"]
        assert environment["SLURM_JOB_ID"], (cell, environment)
        assert environment["SLURM_JOB_PARTITION"] == cluster.partition
        assert environment["CUDA_VISIBLE_DEVICES"] in {str(index) for index in range(cluster.gpus)}, environment
        assert metrics["device"] == "cpu", "the fake GPUs are not CUDA devices: --device auto falls back to the CPU"
        job_ids.add(environment["SLURM_JOB_ID"])
    assert len(job_ids) == len(run_metrics(project)), "one SLURM job per run"
    for dataset in CONFIG["retention_datasets"]:
        zero_shot = json.loads((project / f"results/runs/{dataset}/zeroshot/metrics.json").read_text())
        assert zero_shot["environment"]["SLURM_JOB_ID"], "zero-shot jobs are submitted too, given a GPU"
        assert zero_shot["environment"]["CUDA_VISIBLE_DEVICES"] in {str(index) for index in range(cluster.gpus)}


def test_the_tables_equal_those_of_a_local_run(submitted: tuple[Path, Path], demo: Path):
    project, _ = submitted
    for table in ("accuracy.csv", "retention.csv", "accuracy.md", "retention.md"):
        assert (project / "results/tables" / table).read_text() == (demo / "results/tables" / table).read_text()


def wait_for(condition, what: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"snakemake ended before {what}: {process.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_preempted_training_job_is_requeued_and_resumes_from_its_checkpoint(
    submitted: tuple[Path, Path], cluster: Cluster, tmp_path: Path
):
    project, profile = submitted
    longer = tmp_path / "longer.yaml"  # a longer LoRA run, so that it is preempted part-way
    longer.write_text(yaml.safe_dump({"hyperparameters": {"lora": {"iterations_per_shot": ITERATIONS}}}))
    run_dir = project / "results/runs/demo_patterns/lora/shots1/seed1"
    target = f"{run_dir.relative_to(project)}/metrics.json"
    command = ["snakemake", "--profile", str(profile), "--configfile", "config.yaml", str(longer),
               "--set-resources", "train:checkpoint_every=10", "--", target]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=project, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: (run_dir / "checkpoint.pt").is_file(), "the first checkpoint", process)
        running = cluster.command("squeue", "-h", "-t", "RUNNING", "-o", "%i").stdout.split()
        assert len(running) == 1, f"expected the training job alone to be running, squeue says {running}"
        job_id = running[0]
        # What SLURM does to a preempted job with PreemptMode=REQUEUE: SIGTERM, then back into the queue.
        assert cluster.command("scontrol", "requeue", job_id).returncode == 0
        wait_for(
            lambda: cluster.command("squeue", "-h", "-j", job_id, "-o", "%T").stdout.strip() == "PENDING",
            "the requeue",
            process,
        )
        # A requeued job waits two minutes before it may start again; an admin can let it go at once.
        cluster.command("scontrol", "update", f"jobid={job_id}", "starttime=now")
        _, stderr = process.communicate(timeout=600)
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-5000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["iterations"] == ITERATIONS
    assert metrics["environment"]["SLURM_JOB_ID"] == job_id, "SLURM ran the same job again, not Snakemake"
    assert 10 <= metrics["resumed_at_step"] < ITERATIONS, "stopped mid-training, went on from its checkpoint"
    assert not (run_dir / "checkpoint.pt").exists()
    assert "resuming from" in (run_dir / "train.log").read_text()


def test_a_job_asking_for_more_gpus_than_the_cluster_has_fails_with_the_schedulers_message(
    submitted: tuple[Path, Path], cluster: Cluster
):
    project, profile = submitted
    # A run not yet made (seed 2), so that the failed job's clean-up removes nothing the other tests read.
    target = "results/runs/demo_rare_colors/complora/shots1/seed2/metrics.json"
    result = run(
        project,
        "snakemake",
        "--profile",
        str(profile),
        "--config",
        f"gpus_per_training_job={cluster.gpus + 1}",
        "--",
        target,
        timeout=180,  # fails at submission, with no job left waiting in the queue
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Requested node configuration is not available" in output, output[-3000:]
    assert f"--gpus={cluster.gpus + 1}" in output
    assert not cluster.command("squeue", "-h").stdout.strip()
    assert not (project / target).exists()
