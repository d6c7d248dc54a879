"""The real workflow, end to end, on a reduced demo: Snakemake as a subprocess, then DVC with a local remote.

Marked slow (about two minutes on 2 cores); `pytest -m "not slow"` skips it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import open_clip
import pytest
import torch
import yaml
from PIL import Image

import complora.models  # noqa: F401  (registers demo-vit-tiny with open_clip)
from complora.data.splits import few_shot_split
from complora.evaluation import predictions_sha256
from dataset_fixtures import build_fixture, jpeg, serve
from helpers import table_rows
from workflow_project import REDUCED, ROOT, make_project, run

pytestmark = pytest.mark.slow

DATASETS, RETENTION = REDUCED["datasets"], REDUCED["retention_datasets"]
SHOTS, SEEDS, TRAINED = REDUCED["shots"], REDUCED["seeds"], ("lora", "complora")
CONTRACT = ("dataset", "method", "shots", "seed", "backbone", "accuracy", "zero_shot_accuracy", "retention",
            "trainable_parameters", "iterations", "train_seconds", "eval_seconds", "peak_memory_mib", "device",
            "config_hash", "split_hash", "versions")  # fmt: skip


# The workflow's bookkeeping (a stale job's redo marker, the file of every run's request): not study jobs.
BOOKKEEPING = ("total", "redo", "run_requests")


def job_counts(dry_run_output: str) -> dict[str, int]:
    table = dry_run_output.split("Job stats:")[1].split("\n\n")[0]
    counts = re.findall(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)
    return {name: int(count) for name, count in counts if name not in BOOKKEEPING}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_dirs() -> list[tuple[str, str, int, int]]:
    return [(d, m, k, s) for d in DATASETS for m in TRAINED for k in SHOTS for s in SEEDS]


def test_every_output_is_there_and_holds_the_results_contract(demo: Path):
    model_metadata = json.loads((demo / "resources/models/demo-vit-tiny/metadata.json").read_text())
    assert (demo / "resources/data/demo_world/world.json").is_file()
    assert (demo / "resources/projectors/demo-vit-tiny.safetensors").is_file()
    # k up to 64 is always stored: a variant with k <= 64 leaves the projector (and every Comp-LoRA run) alone
    assert json.loads((demo / "resources/projectors/demo-vit-tiny.stats.json").read_text())["k_max"] == 64
    for dataset in set(DATASETS) | set(RETENTION):
        zero_shot = json.loads((demo / f"results/runs/{dataset}/zeroshot/metrics.json").read_text())
        assert zero_shot["backbone"]["weights_sha256"] == model_metadata["weights_sha256"]
    hashes = set()
    for dataset, method, shots, seed in run_dirs():
        folder = demo / f"results/runs/{dataset}/{method}/shots{shots}/seed{seed}"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert set(CONTRACT) <= set(metrics), folder
        assert (metrics["dataset"], metrics["method"], metrics["shots"], metrics["seed"]) == (
            dataset,
            method,
            shots,
            seed,
        )
        split = demo / f"resources/splits/{dataset}/shots{shots}_seed{seed}.json"
        assert metrics["split_hash"] == sha256(split)
        expected = few_shot_split(demo / f"resources/data/demo_world/{dataset}/split.json", dataset, shots, seed)
        assert json.loads(split.read_text()) == expected, "the split file is the CoOp draw for this seed"
        assert metrics["iterations"] == shots * 3 and set(metrics["retention"]) == set(RETENTION) - {dataset}
        assert metrics["backbone"]["weights_sha256"] == model_metadata["weights_sha256"]
        assert (folder / "adapter" / "adapter_config.json").is_file()
        assert "training:" in (folder / "train.log").read_text(), "the progress bar goes to the run's log"
        hashes.add(metrics["config_hash"])
    assert len(hashes) == len(run_dirs())

    accuracy = (demo / "results/tables/accuracy.csv").read_text().splitlines()
    assert accuracy[0] == "dataset,method,family,shots,mean,std,n_seeds"
    assert len(accuracy) - 1 == len(DATASETS) * (1 + len(TRAINED) * len(SHOTS))
    assert (demo / "results/tables/retention.csv").read_text().startswith("dataset,method,family,shots,retention_")
    runs = (demo / "results/tables/runs.csv").read_text().splitlines()
    assert runs[0].startswith(
        "dataset,method,family,shots,seed,accuracy,zero_shot_accuracy,gain,protocol,base_accuracy,new_accuracy,"
        "harmonic_mean,mean_retention"
    )
    assert len(runs) - 1 == len(DATASETS) + len(run_dirs())
    assert (demo / "results/tables/comparisons.csv").read_text().startswith("metric,method,family,reference,")
    assert table_rows((demo / "results/tables/accuracy.md").read_text())[0][:3] == ["shots", "method", "demo_patterns"]
    plots = [f"accuracy_{d}.png" for d in DATASETS] + ["retention.png", "accuracy_vs_shots.png",
             "accuracy_vs_retention.png", "training_curves.png"]  # fmt: skip
    for name in plots:
        assert (demo / "results/plots" / name).stat().st_size > 1000, name
    for dataset, method, shots, seed in run_dirs():
        curve = (demo / f"results/runs/{dataset}/{method}/shots{shots}/seed{seed}/curve.csv").read_text().splitlines()
        assert curve[0] == "step,loss,learning_rate" and len(curve) - 1 == shots * 3, "every step of so short a run"
    assert "# Results summary" in (demo / "results/summary.md").read_text()
    assert json.loads((demo / "results/metrics.json").read_text())["runs"] == len(DATASETS) + len(run_dirs())


def test_a_rerun_with_nothing_changed_does_nothing(demo: Path):
    result = run(demo, "snakemake", "--cores", "2", "-n")
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr


def test_changing_one_methods_hyperparameter_reruns_only_its_jobs(demo: Path, tmp_path: Path):
    override = tmp_path / "lora_rank4.yaml"
    override.write_text(yaml.safe_dump({"hyperparameters": {"lora": {"iterations_per_shot": 3, "rank": 4}}}))
    result = run(demo, "snakemake", "--cores", "2", "-n", "--configfile", "config.yaml", str(override))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert job_counts(output) == {"train": len(DATASETS) * len(SHOTS) * len(SEEDS), "aggregate": 1, "all": 1}
    planned = re.findall(r"output: (results/runs/\S+/metrics\.json)", output)
    assert planned and all("/lora/" in path for path in planned)


BAD_CONFIGS = {
    "unknown method": (
        {"methods": ["zeroshot", "lora", "adapter"]},
        ["methods[2]", "'adapter'", "zeroshot, lora, complora"],
    ),
    "unknown dataset": ({"datasets": ["demo_shapes", "imagenet"]}, ["datasets[1]", "'imagenet'", "demo_rare_colors"]),
    "negative shots": ({"shots": [1, -2]}, ["shots[1]", "-2", ">= 1"]),
    "wrong type": ({"seeds": "1"}, ["seeds", "expected array", "'1'"]),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_a_bad_config_stops_the_run_before_any_job(case: str, tmp_path: Path):
    change, expected = BAD_CONFIGS[case]
    project = make_project(tmp_path / "project", {**REDUCED, **change})
    result = run(project, "snakemake", "--cores", "1")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "is not a valid experiment config" in output
    for text in expected:
        assert text in output, (text, output)
    assert not any((project / name).exists() for name in ("resources", "results", "logs"))


def test_dvc_repro_push_and_pull(demo: Path, tmp_path: Path):
    project = make_project(tmp_path / "project", REDUCED)
    for command in (("git", "init", "-q"), ("dvc", "init", "-q")):
        assert run(project, *command).returncode == 0
    first = run(project, "dvc", "repro")
    assert first.returncode == 0, first.stderr[-5000:]
    second = run(project, "dvc", "repro")
    assert second.returncode == 0 and "Data and pipelines are up to date" in second.stdout, second.stdout
    for table in ("accuracy.csv", "retention.csv"):  # same config and seeds on CPU: the same figures
        assert (project / "results/tables" / table).read_bytes() == (demo / "results/tables" / table).read_bytes()
    metrics = run(project, "dvc", "metrics", "show", "--json")
    assert json.loads(metrics.stdout)  # dvc reads the declared metrics file
    assert "accuracy.lora.shots1" in run(project, "dvc", "metrics", "show").stdout

    tracked = [
        "resources/models/demo-vit-tiny/open_clip_model.safetensors",
        "resources/splits/demo_patterns/shots2_seed1.json",
        "resources/projectors/demo-vit-tiny.safetensors",
        "results/runs/demo_rare_colors/complora/shots1/seed1/metrics.json",
        "results/runs/demo_rare_colors/complora/shots1/seed1/adapter/adapter_model.safetensors",
    ]
    before = {path: sha256(project / path) for path in tracked}
    assert run(project, "dvc", "remote", "add", "-d", "store", str(tmp_path / "remote")).returncode == 0
    push = run(project, "dvc", "push")
    assert push.returncode == 0, push.stderr
    for path in (".dvc/cache", "resources", "results/runs"):
        shutil.rmtree(project / path)
    pull = run(project, "dvc", "pull")
    assert pull.returncode == 0, pull.stderr
    assert {path: sha256(project / path) for path in tracked} == before
    status = run(project, "dvc", "status")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout

    # A clone that pulled its artifacts has no Snakemake job records: recording them once (README) makes a
    # later one-method change rerun exactly that method's jobs, as in the clone that ran them.
    shutil.rmtree(project / ".snakemake")
    assert run(project, "snakemake", "--cores", "2", "--touch", "--forceall").returncode == 0
    assert "Nothing to be done" in run(project, "snakemake", "-n").stdout
    config = yaml.safe_load((project / "config.yaml").read_text())
    config["hyperparameters"]["lora"]["rank"] = 4
    (project / "config.yaml").write_text(yaml.safe_dump(config))
    counts = job_counts(run(project, "snakemake", "-n").stdout)
    assert counts == {"train": len(DATASETS) * len(SHOTS) * len(SEEDS), "aggregate": 1, "all": 1}


def test_paper_config_dry_run_lists_the_whole_grid(tmp_path: Path):
    # Merged over the demo's own config.yaml, as a user runs it: nothing of the demo's may leak through.
    project = make_project(tmp_path / "project", yaml.safe_load((ROOT / "config.yaml").read_text()))
    result = run(project, "snakemake", "-n", "--printshellcmds", "--configfile", "config/paper.yaml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    lora = next(line for line in output.splitlines() if "complora train" in line and "--method lora" in line)
    assert "--learning-rate 0.0002 " in lora and "--rank 2 " in lora, "CLIP-LoRA's hyperparameters, not the demo's"
    iterations = {int(k): int(i) for k, i in re.findall(r"shots(\d+)_seed\d+\.json .*?--iterations (\d+)", output)}
    assert iterations and all(i == 500 * k for k, i in iterations.items())
    grid = 11 * 5 * 3
    ablation = 4 * 4 * 2 * 3  # four Comp-LoRA variants on 4 datasets x 2 shots x 3 seeds
    assert job_counts(output) == {"dataset": 11, "pretrained_weights": 1, "few_shot_split": grid, "projector": 1,
                                  "eval_cache": 11, "zero_shot": 11, "train": 2 * grid + ablation, "features": 11,
                                  "fit": 11 * 8, "prompt": 4 * grid, "aggregate": 1, "all": 1}  # fmt: skip
    gpu_jobs = re.findall(r"^rule (\w+):(?:\n    .*)*\n    resources: .*gpu=1", output, re.MULTILINE)
    assert sorted(gpu_jobs) == (
        ["features"] * 11 + ["prompt"] * 4 * grid + ["train"] * (2 * grid + ablation) + ["zero_shot"] * 11
    )
    # The base-to-new option: 16 shots per base class, the ablation at 16 shots only (the counts its file lists).
    result = run(project, "snakemake", "-n", "--configfile", "config/paper.yaml", "config/paper_base_to_new.yaml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert job_counts(output) == {"dataset": 11, "pretrained_weights": 1, "few_shot_split": 33, "projector": 1,
                                  "eval_cache": 11, "zero_shot": 11, "train": 66 + 48, "features": 11, "fit": 88,
                                  "prompt": 4 * 33, "aggregate": 1, "all": 1}  # fmt: skip
    assert "results/base_to_new/tables/base_to_new.md" in output


def test_downloaded_and_custom_datasets_through_the_workflow(tmp_path: Path):
    """A registry dataset fetched from a local server (first mirror 404) and a custom image folder, end to end."""
    www = tmp_path / "www"
    custom = tmp_path / "my_images"
    for cls in ("cat", "dog"):
        (custom / cls).mkdir(parents=True)
        for index in range(6):
            (custom / cls / f"{index}.jpg").write_bytes(jpeg(index))
    with serve(www) as (url, requests):
        registry = tmp_path / "registry.yaml"
        registry.write_text(yaml.safe_dump({"EuroSAT": build_fixture("EuroSAT", url, www)}))
        config = {**REDUCED, "datasets": ["EuroSAT", "mine"], "retention_datasets": ["EuroSAT", "mine"], "shots": [1],
                  "data": {"registry": str(registry), "cache": str(tmp_path / "cache")},
                  "custom_datasets": {"mine": {"images": str(custom), "seed": 5}}}  # fmt: skip
        project = make_project(tmp_path / "project", config)
        result = run(project, "snakemake", "--cores", "2")
        assert result.returncode == 0, result.stderr[-5000:]
    assert any(path.startswith("/missing/EuroSAT/") for path, _ in requests)
    manifest = json.loads((project / "resources/data/EuroSAT/dataset.json").read_text())
    assert manifest["counts"] == {"train": 6, "val": 3, "test": 3} and manifest["source"]["kind"] == "download"
    assert json.loads((project / "resources/data/mine/dataset.json").read_text())["counts"]["train"] == 6
    for dataset in ("EuroSAT", "mine"):
        metrics = json.loads((project / f"results/runs/{dataset}/complora/shots1/seed1/metrics.json").read_text())
        assert set(metrics["retention"]) == {"EuroSAT", "mine"} - {dataset}
    header = table_rows((project / "results/tables/accuracy.md").read_text())[0]
    assert header == ["shots", "method", "EuroSAT", "mine", "Average"]


def test_missing_imagenet_stops_the_run_with_the_layout_to_create(tmp_path: Path):
    config = {**REDUCED, "datasets": ["ImageNet"], "retention_datasets": [], "methods": ["zeroshot"]}
    project = make_project(tmp_path / "project", config)
    result = run(project, "snakemake", "--cores", "2", "resources/data/ImageNet")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "<data.root>/imagenet/images/train/<wnid>/*.JPEG" in output, (
        "the layout is on the console, not only in the log"
    )
    assert "set data.root" in output and not (project / "resources/data/ImageNet").exists()


def _non_square_copies(world: Path, out: Path) -> None:
    """The demo's shapes as JPEG photos of other sizes and aspect ratios (landscape, portrait, small), padded
    with their own background so the shape stays in the centre crop."""
    split = json.loads((world / "demo_shapes" / "split.json").read_text())
    sizes = [(64, 48), (48, 64), (40, 30), (75, 100)]
    for index, (relpath, _, name) in enumerate(split["train"] + split["val"] + split["test"]):
        image = Image.open(world / "demo_shapes" / relpath).convert("RGB")
        width, height = sizes[index % len(sizes)]
        scaled = image.resize((min(width, height),) * 2, Image.BICUBIC)
        canvas = Image.new("RGB", (width, height), scaled.getpixel((0, 0)))
        canvas.paste(scaled, ((width - scaled.width) // 2, (height - scaled.height) // 2))
        (out / name).mkdir(parents=True, exist_ok=True)
        canvas.save(out / name / f"{index}.jpg", quality=92)


@torch.no_grad()
def _plain_open_clip_top1(project: Path, dataset: str) -> tuple[float, str]:
    """Zero-shot top-1 the way an open_clip user computes it: preprocess_val on each file, one batch."""
    checkpoint = project / "resources/models/demo-vit-tiny/open_clip_model.safetensors"
    model, _, preprocess_val = open_clip.create_model_and_transforms("demo-vit-tiny", pretrained=str(checkpoint))
    model.eval()
    tokenizer = open_clip.get_tokenizer("demo-vit-tiny")
    test = json.loads((project / f"resources/data/{dataset}/split.json").read_text())["test"]
    folder = project / f"resources/data/{dataset}/images"
    images = torch.stack([preprocess_val(Image.open(folder / relpath)) for relpath, _, _ in test])
    names = [name for _, name in sorted({(label, name) for _, label, name in test})]
    texts = tokenizer([f"a photo of a {name}." for name in names])
    image_features = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
    text_features = torch.nn.functional.normalize(model.encode_text(texts), dim=-1)
    predictions = (image_features @ text_features.T).argmax(dim=-1)
    assert len(set(predictions.tolist())) > 1, "a model that predicts one class tells no preprocessing apart"
    accuracy = 100.0 * (predictions == torch.tensor([label for _, label, _ in test])).float().mean().item()
    return accuracy, predictions_sha256(predictions)


def test_non_square_images_get_open_clips_zero_shot_accuracy_through_the_pipeline(demo: Path, tmp_path: Path):
    project = tmp_path / "project"
    shutil.copytree(demo, project, symlinks=True)
    _non_square_copies(project / "resources/data/demo_world", tmp_path / "photos")
    extra = {"datasets": ["photos"], "retention_datasets": ["photos"], "methods": ["zeroshot"],
             "custom_datasets": {"photos": {"images": str(tmp_path / "photos")}}}  # fmt: skip
    (project / "photos.yaml").write_text(yaml.safe_dump(extra))
    target = "results/runs/photos/zeroshot/metrics.json"
    result = run(project, "snakemake", "--cores", "2", "--configfile", "config.yaml", "photos.yaml", "--", target)
    assert result.returncode == 0, result.stderr[-5000:]
    metrics = json.loads((project / target).read_text())
    cache = project / metrics["data"]["eval_cache"]
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["count"] == metrics["test_size"] > 20 and manifest["shape"][1:] == [32, 32, 3]
    accuracy, predictions = _plain_open_clip_top1(project, "photos")
    assert metrics["accuracy"] == round(accuracy, 2), (metrics["accuracy"], accuracy)
    assert metrics["predictions_sha256"] == predictions, "the very same predictions, image by image"

    (project / "photos.yaml").write_text(yaml.safe_dump({**extra, "data": {"eval_cache": False}}))
    result = run(project, "snakemake", "--cores", "2", "--configfile", "config.yaml", "photos.yaml", "--", target)
    assert result.returncode == 0, result.stderr[-5000:]
    decoded = json.loads((project / target).read_text())
    assert decoded["data"]["eval_cache"] is None and decoded["predictions_sha256"] == predictions


def test_without_evaluation_caches_no_cache_job_runs_and_dvc_still_finds_its_output(tmp_path: Path):
    project = make_project(tmp_path / "project", {**REDUCED, "data": {"eval_cache": False}})
    result = run(project, "snakemake", "-n", "-p")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "eval_cache" not in job_counts(result.stdout) and "complora evaluate" in result.stdout
    assert "--eval-cache" not in result.stdout
    experiment = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]["experiment"]
    assert "resources/evalcache" in experiment["cmd"], "dvc.yaml declares it: DVC refuses a missing output"


FEATURE_METHODS = ["linear_probe", "tip_adapter", "tip_adapter_f", "clip_adapter", "taskres", "lp_pp", "zs_lp", "clap"]


def test_every_method_runs_and_a_variants_change_reruns_only_that_variant(tmp_path: Path):
    quick = {"tip_adapter_f": {"epochs": 2}, "clip_adapter": {"epochs": 2}, "taskres": {"epochs": 2}}
    config = {
        **REDUCED,
        "methods": ["zeroshot", "lora", "complora", "complora_k4", *FEATURE_METHODS, "taskres_a1"],
        "hyperparameters": {**REDUCED["hyperparameters"], **quick,
                            "complora_k4": {"family": "complora", "k": 4, "shots": [1]},
                            "taskres_a1": {"family": "taskres", "alpha": 1.0}},
    }  # fmt: skip
    project = make_project(tmp_path / "project", config)
    result = run(project, "snakemake", "--cores", "2")
    assert result.returncode == 0, result.stderr[-5000:]
    for dataset in DATASETS:
        for method in [*FEATURE_METHODS, "taskres_a1"]:
            for shots in SHOTS:
                metrics = json.loads((project / run_dir_of(dataset, method, shots)).read_text())
                assert metrics["method"] == method and metrics["retention_status"] == "encoders unchanged"
                assert metrics["family"] == ("taskres" if method == "taskres_a1" else method)
        assert (project / run_dir_of(dataset, "complora_k4", 1)).is_file()
        assert not (project / run_dir_of(dataset, "complora_k4", 2)).exists(), "the variant runs where it is told"
        settings = json.loads((project / run_dir_of(dataset, "taskres_a1", 1)).read_text())["config"]
        assert settings["hyperparameters"]["alpha"] == 1.0 and settings["hyperparameters"]["epochs"] == 2
    accuracy = table_rows((project / "results/tables/accuracy.md").read_text())
    retention = table_rows((project / "results/tables/retention.md").read_text())
    for label in ("Tip-Adapter-F", "LP++", "CLAP", "ZS-LP", "taskres_a1", "complora_k4", "Linear probe"):
        assert label in [row[1] for row in accuracy], label
    assert ["1", "Tip-Adapter", "encoders unchanged"] in [row[:3] for row in retention]
    assert re.fullmatch(r"[+-]\d+\.\d\d", next(row for row in retention if row[:2] == ["1", "complora_k4"])[2])

    changed = tmp_path / "changed.yaml"
    # Fewer views than the store keeps, a k under the projector's: neither touches another method's jobs.
    cases = (
        ("taskres_a1", {"alpha": 2.0}, "fit"),
        ("taskres_a1", {"views": 10}, "fit"),
        ("complora_k4", {"k": 2}, "train"),
    )
    for variant, change, rule in cases:
        override = {"hyperparameters": {variant: {**config["hyperparameters"][variant], **change}}}
        changed.write_text(yaml.safe_dump(override))
        output = run(project, "snakemake", "-n", "--configfile", "config.yaml", str(changed)).stdout
        expected = len(DATASETS) * (1 if rule == "fit" else len(SEEDS))
        assert job_counts(output) == {rule: expected, "aggregate": 1, "all": 1}, output[-3000:]
        planned = re.findall(r"output: (results/runs/\S+/metrics\.json)", output)
        assert planned and all(f"/{variant}/" in path for path in planned)


def test_base_to_new_study_scores_every_kind_of_method_on_base_and_new_classes(tmp_path: Path):
    methods = ["zeroshot", "lora", "linear_probe", "tip_adapter", "clip_adapter", "coop4", "kgcoop", "cocoop"]
    quick = {"clip_adapter": {"epochs": 2}, "coop4": {"epochs": 2}, "kgcoop": {"epochs": 2}, "cocoop": {"epochs": 1}}
    config = {**REDUCED, "protocol": "base_to_new", "shots": [2], "methods": methods,
              "hyperparameters": {"lora": REDUCED["hyperparameters"]["lora"], **quick}}  # fmt: skip
    project = make_project(tmp_path / "project", config)
    result = run(project, "snakemake", "--cores", "2")
    assert result.returncode == 0, result.stderr[-5000:]
    assert not (project / "results/runs").exists() and not (project / "resources/splits").exists()
    for dataset in DATASETS:
        split = json.loads((project / f"resources/base_to_new/splits/{dataset}/shots2_seed1.json").read_text())
        assert split["protocol"] == "base_to_new" and (split["base_classes"], split["all_classes"]) == (3, 5)
        zero_shot = json.loads((project / f"results/base_to_new/runs/{dataset}/zeroshot/metrics.json").read_text())
        folder = project / f"results/base_to_new/runs/{dataset}"
        runs = {m: json.loads((folder / m / "shots2/seed1/metrics.json").read_text()) for m in methods[1:]}
        for method, metrics in runs.items():
            assert metrics["protocol"] == "base_to_new" and metrics["accuracy"] == metrics["base_accuracy"], method
            assert metrics["zero_shot_accuracy"] == zero_shot["base_accuracy"], method
        assert runs["linear_probe"]["new_accuracy"] is None, "a linear probe names no class it was not fitted on"
        # Tip-Adapter's cache holds no new-class image: on the new classes it is zero-shot CLIP.
        assert runs["tip_adapter"]["new_accuracy"] == zero_shot["new_accuracy"]
        for method in ("lora", "clip_adapter", "coop4", "kgcoop", "cocoop"):
            assert runs[method]["new_accuracy"] is not None and runs[method]["harmonic_mean"] is not None, method
    rows = table_rows((project / "results/base_to_new/tables/base_to_new.md").read_text())
    labels = [row[0] for row in rows]
    for label in ("Zero-shot CLIP", "LoRA", "Linear probe", "Tip-Adapter", "CoOp (4)", "KgCoOp", "CoCoOp"):
        assert label in labels, label
    assert next(row for row in rows if row[0] == "Linear probe")[2:] == ["-", "-"]
    summary = (project / "results/base_to_new/summary.md").read_text()
    assert "## Base-to-new" in summary and "### Average over datasets (2 shots per base class)" in summary
    assert json.loads((project / "results/base_to_new/metrics.json").read_text())["base_to_new"]["coop4"]


def run_dir_of(dataset: str, method: str, shots: int) -> str:
    return f"results/runs/{dataset}/{method}/shots{shots}/seed{SEEDS[0]}/metrics.json"


def _metrics_files(project: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(project)): p.read_bytes() for p in sorted((project / "results/runs").rglob("metrics.json"))
    }


def _only_loras_runs_were_redone(before: dict[str, bytes], after: dict[str, bytes], learning_rate: float) -> None:
    assert set(before) == set(after)
    redone = [path for path in before if before[path] != after[path]]
    assert sorted(redone) == sorted(path for path in before if "/lora/" in path), redone
    for path in redone:
        assert json.loads(after[path])["request"]["hyperparameters"]["learning_rate"] == learning_rate


def test_a_stale_run_is_redone_without_snakemakes_job_records(demo: Path, tmp_path: Path):
    project = tmp_path / "project"
    shutil.copytree(demo, project, symlinks=True)
    shutil.rmtree(project / ".snakemake")  # as in a fresh clone after `dvc pull`
    for path in (project / "resources").rglob("*"):  # ... whose checkout wrote the inputs after the runs
        if path.is_file() and "requests" not in path.parts:
            os.utime(path)
    assert "Nothing to be done" in run(project, "snakemake", "-n").stdout, "artifacts' times decide nothing"
    before = _metrics_files(project)
    config = yaml.safe_load((project / "config.yaml").read_text())
    config["hyperparameters"]["lora"]["learning_rate"] = 0.001
    (project / "config.yaml").write_text(yaml.safe_dump(config))
    dry = run(project, "snakemake", "-n")
    output = dry.stdout + dry.stderr
    runs = len(DATASETS) * len(SHOTS) * len(SEEDS)
    assert job_counts(dry.stdout) == {"train": runs, "aggregate": 1, "all": 1}, output[-3000:]
    assert "finished job(s) are stale, damaged or missing" in output
    assert "results/runs/demo_patterns/lora/shots1/seed1: hyperparameters.learning_rate: 0.0002 → 0.001" in output
    result = run(project, "snakemake", "--cores", "2")
    assert result.returncode == 0, result.stderr[-5000:]
    _only_loras_runs_were_redone(before, _metrics_files(project), 0.001)
    assert "Nothing to be done" in run(project, "snakemake", "-n").stdout

    # An artifact's settings: the pretrained model and everything made from it, in one run.
    upstream = tmp_path / "steps.yaml"
    upstream.write_text(yaml.safe_dump({"demo": {"pretraining": {**REDUCED["demo"]["pretraining"], "steps": 21}}}))
    dry = run(project, "snakemake", "-n", "--configfile", "config.yaml", str(upstream))
    assert "resources/models/demo-vit-tiny: pretraining.steps: 20 → 21" in dry.stdout + dry.stderr
    cells, tested = len(DATASETS) * len(SHOTS) * len(SEEDS), len(set(DATASETS) | set(RETENTION))
    assert job_counts(dry.stdout) == {"demo_pretrain": 1, "projector": 1, "eval_cache": tested, "zero_shot": tested,
                                      "train": 2 * cells, "aggregate": 1, "all": 1}  # fmt: skip


def test_a_dvc_experiment_with_another_learning_rate_redoes_only_loras_runs(demo: Path, tmp_path: Path):
    project = tmp_path / "project"
    shutil.copytree(demo, project, symlinks=True, ignore=shutil.ignore_patterns(".snakemake"))
    shutil.copy(ROOT / ".gitignore", project / ".gitignore")
    shutil.copy(ROOT / "results" / ".gitignore", project / "results" / ".gitignore")
    # The default written out, as config.yaml does (DVC's -S changes keys the file has; +key adds one).
    config = yaml.safe_load((project / "config.yaml").read_text())
    config["hyperparameters"]["lora"]["learning_rate"] = 0.0002
    (project / "config.yaml").write_text(yaml.safe_dump(config))
    identity = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@localhost"}  # fmt: skip
    for command in (("git", "init", "-q"), ("dvc", "init", "-q"), ("dvc", "repro")):
        result = run(project, *command, env=identity)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for command in (("git", "add", "-A"), ("git", "commit", "-qm", "baseline")):
        assert run(project, *command, env=identity).returncode == 0
    assert "Nothing to be done" in run(project, "snakemake", "-n").stdout, "the default, written out, changes nothing"
    before = _metrics_files(project)
    # --temp runs in a copy of the commit, which has no .snakemake/ (as a queued experiment does).
    experiment = run(project, "dvc", "exp", "run", "--temp", "-S",
                     "config.yaml:hyperparameters.lora.learning_rate=0.001", env=identity)  # fmt: skip
    assert experiment.returncode == 0, experiment.stdout[-3000:] + experiment.stderr[-3000:]
    name = re.search(r"Ran experiment\(s\): (\S+)", experiment.stdout + experiment.stderr).group(1)
    assert run(project, "dvc", "exp", "apply", name, env=identity).returncode == 0
    _only_loras_runs_were_redone(before, _metrics_files(project), 0.001)


def test_the_report_holds_the_tables_and_plots_and_opens_offline(demo: Path, tmp_path: Path):
    out = tmp_path / "report.html"
    result = run(demo, "snakemake", "--report", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    page = out.read_text()
    assert not re.search(r"<script[^>]*\ssrc=|<link[^>]*\shref=", page), "everything inline: it opens offline"
    embedded = {
        name: base64.b64decode(data)
        for name, data in re.findall(r"data:[a-z/]+;charset=utf8;filename=([^;]+);base64,([A-Za-z0-9+/=]+)", page)
    }
    for table, text in (("accuracy.html", "Zero-shot CLIP"), ("retention.html", "Comp-LoRA"),
                        ("comparisons.html", "mean_difference"), ("runs.html", "demo_rare_colors")):  # fmt: skip
        assert "<table" in embedded[table].decode() and text in embedded[table].decode(), table
    for plot in ("accuracy_vs_shots.png", "accuracy_vs_retention.png", "retention.png", "training_curves.png",
                 *[f"accuracy_{d}.png" for d in DATASETS]):  # fmt: skip
        assert embedded[plot][:8] == b"\x89PNG\r\n\x1a\n", plot
    for category in ("Accuracy", "Retention", "Comparisons", "Runs"):
        assert f'"{category}"' in page, category
    assert "Comp-LoRA and its baselines on CLIP few-shot classification" in page, "the workflow description"
    assert "paired differences from the reference" in page.lower(), "the captions"
