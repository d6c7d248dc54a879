"""One cell of the study: zero-shot and trained runs write the results contract, reproducibly, and refuse
references that do not belong to them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import open_clip
import pytest
import torch

from complora.adapters import AdapterConfig, load_adapter
from complora.cli import main
from complora.data.splits import few_shot_split, write_few_shot_split
from complora.data.testset import DatasetRef, open_test_split
from complora.demo.datasets import DemoSizes, write_demo_world
from complora.errors import ComploraError
from complora.evaluation import DEFAULT_TEMPLATE, text_classifier, zero_shot_accuracies
from complora.experiment import Backbone, TrainSpec, evaluate_zero_shot, train_and_evaluate
from complora.finetune import FinetuneSettings
from complora.models import load_clip
from complora.subspace import build_projector, load_projector, save_projector
from complora.tensorfile import save_tensors
from helpers import TRANSFORM_32

CONTRACT = (
    "dataset", "method", "shots", "seed", "backbone", "accuracy", "zero_shot_accuracy", "retention",
    "trainable_parameters", "iterations", "train_seconds", "eval_seconds", "peak_memory_mib", "device",
    "config_hash", "split_hash", "versions",
)  # fmt: skip
VARYING = {"train_seconds", "eval_seconds", "wall_seconds", "peak_memory_mib", "peak_gpu_memory_mib", "data"}
TARGET, OTHERS = "demo_rare_colors", ("demo_shapes", "demo_patterns")


def save_random_weights(path: Path, seed: int) -> Path:
    model = load_clip("demo-vit-tiny", "none", seed=seed)
    save_tensors(dict(model.state_dict()), path, {"format": "open_clip"})
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("study")
    world = write_demo_world(root / "world", seed=0, sizes=DemoSizes(4, 2, 4, 32))
    checkpoint = save_random_weights(root / "weights.safetensors", seed=0)
    backbone = Backbone("demo-vit-tiny", str(checkpoint))
    zero_shot = {}
    for name in (TARGET, *OTHERS):
        dataset = DatasetRef(name, world / name, world / name / "split.json")
        zero_shot[name] = root / "zs" / name / "metrics.json"
        evaluate_zero_shot(dataset, backbone, zero_shot[name], device="cpu")
    few_shot = root / "splits" / "shots2_seed1.json"
    write_few_shot_split(few_shot_split(world / TARGET / "split.json", TARGET, 2, 1), few_shot)
    projector = root / "projector.safetensors"
    config = AdapterConfig(method="complora", k=4)
    save_projector(build_projector(load_clip("demo-vit-tiny", str(checkpoint)), config, 4), projector)
    return {"root": root, "world": world, "backbone": backbone, "zero_shot": zero_shot, "few_shot": few_shot,
            "projector": projector}  # fmt: skip


def spec(study: dict, method: str = "lora", **changes) -> TrainSpec:
    fields = {
        "dataset": DatasetRef(TARGET, study["world"] / TARGET, study["world"] / TARGET / "split.json"),
        "few_shot_file": study["few_shot"],
        "backbone": study["backbone"],
        "adapter": AdapterConfig(method=method, k=4),
        "settings": FinetuneSettings(iterations=4, learning_rate=5e-3),
        "seed": 1,
        "zero_shot_runs": list(study["zero_shot"].values()),
        "projector": study["projector"] if method == "complora" else None,
    }
    return TrainSpec(**{**fields, **changes})


def test_zero_shot_run_records_the_contract(study: dict):
    metrics = json.loads(study["zero_shot"][TARGET].read_text())
    assert set(CONTRACT) <= set(metrics)
    assert (
        metrics["method"] == "zeroshot"
        and metrics["shots"] == 0
        and metrics["accuracy"] == metrics["zero_shot_accuracy"]
    )
    assert metrics["split_hash"] == hashlib.sha256((study["world"] / TARGET / "split.json").read_bytes()).hexdigest()
    assert metrics["test_size"] == 5 * 4 and metrics["device"] == "cpu"


def test_trained_run_records_the_contract_and_its_adapter_reproduces_it(study: dict, tmp_path: Path):
    metrics = train_and_evaluate(spec(study), tmp_path / "run", device="cpu")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert set(CONTRACT) <= set(metrics)
    assert metrics["split_hash"] == hashlib.sha256(study["few_shot"].read_bytes()).hexdigest()
    assert metrics["iterations"] == 4 and metrics["shots"] == 2 and metrics["trainable_parameters"] > 0
    assert set(metrics["retention"]) == set(OTHERS)
    for name in OTHERS:
        reference = json.loads(study["zero_shot"][name].read_text())["accuracy"]
        assert metrics["retention"][name] == pytest.approx(metrics["retention_accuracy"][name] - reference, abs=0.011)
    assert metrics["zero_shot_accuracy"] == json.loads(study["zero_shot"][TARGET].read_text())["accuracy"]
    assert metrics["environment"]["torch_threads"] >= 1 and "CUDA_VISIBLE_DEVICES" in metrics["environment"]

    model = load_clip("demo-vit-tiny", study["backbone"].pretrained).eval()
    load_adapter(model, tmp_path / "run" / "adapter")
    dataset = DatasetRef(TARGET, study["world"] / TARGET, study["world"] / TARGET / "split.json")
    test = open_test_split(dataset, TRANSFORM_32)
    tokenizer = open_clip.get_tokenizer("demo-vit-tiny")
    (reloaded,) = zero_shot_accuracies(model, tokenizer, test, [DEFAULT_TEMPLATE], TRANSFORM_32)
    assert round(reloaded.accuracy, 2) == metrics["accuracy"]
    assert reloaded.predictions_sha256 == metrics["predictions_sha256"]


def test_cpu_runs_repeat_exactly_and_methods_differ(study: dict, tmp_path: Path):
    first = train_and_evaluate(spec(study), tmp_path / "a", device="cpu")
    second = train_and_evaluate(spec(study), tmp_path / "b", device="cpu")
    assert {k: v for k, v in first.items() if k not in VARYING} == {k: v for k, v in second.items() if k not in VARYING}
    complora = train_and_evaluate(spec(study, "complora"), tmp_path / "c", device="cpu")
    assert complora["projector_sha256"] == hashlib.sha256(study["projector"].read_bytes()).hexdigest()
    assert complora["config_hash"] != first["config_hash"]
    assert complora["config"]["adapter"]["k"] == 4 and "k" not in first["config"]["adapter"]
    other_seed = train_and_evaluate(spec(study, seed=2), tmp_path / "d", device="cpu")
    assert other_seed["config_hash"] != first["config_hash"]
    assert (tmp_path / "a" / "adapter" / "adapter_model.safetensors").read_bytes() != (
        tmp_path / "d" / "adapter" / "adapter_model.safetensors"
    ).read_bytes()


def test_stale_zero_shot_run_is_refused(study: dict, tmp_path: Path):
    other_weights = save_random_weights(tmp_path / "other.safetensors", seed=1)
    with pytest.raises(ComploraError, match="stale"):
        train_and_evaluate(spec(study, backbone=Backbone("demo-vit-tiny", str(other_weights))), tmp_path / "r")
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_foreign_split_and_missing_reference_are_refused(study: dict, tmp_path: Path):
    patterns = study["world"] / "demo_patterns"
    with pytest.raises(ComploraError, match="redraw it"):
        train_and_evaluate(
            spec(study, dataset=DatasetRef("demo_patterns", patterns, patterns / "split.json")), tmp_path
        )
    with pytest.raises(ComploraError, match="no zero-shot run of demo_rare_colors"):
        train_and_evaluate(spec(study, zero_shot_runs=[study["zero_shot"]["demo_shapes"]]), tmp_path)
    assert not (tmp_path / "metrics.json").exists()


def test_train_cli(study: dict, tmp_path: Path, capsys):
    world = study["world"]
    args = [
        "train", "--dataset", TARGET, "--data", str(world / TARGET), "--split-file", str(world / TARGET / "split.json"),
        "--few-shot", str(study["few_shot"]), "--seed", "1", "--method", "complora", "--model", "demo-vit-tiny",
        "--pretrained", study["backbone"].pretrained, "--projector", str(study["projector"]), "--k", "4",
        "--iterations", "2", "--rank", "1", "--threads", "1", "--device", "cpu", "--out-dir", str(tmp_path / "run"),
    ]  # fmt: skip
    for path in study["zero_shot"].values():
        args += ["--zero-shot", str(path)]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["adapter"]["rank"] == 1 and metrics["iterations"] == 2
    assert main([*args[:-2], "--out-dir", str(tmp_path / "gpu"), "--device", "cuda:7"]) == 2
    assert "--device cuda:7" in capsys.readouterr().err
    assert load_projector(study["projector"]).k_max == 4


def test_zero_shot_records_coop_prompts_beside_the_single_prompt(study: dict, tmp_path: Path):
    world, name = study["world"], "demo_shapes"
    dataset = DatasetRef(name, world / name, world / name / "split.json")
    prompts = ["itap of a {}.", "a bad photo of the {}."]
    metrics = evaluate_zero_shot(dataset, study["backbone"], tmp_path / "m.json", device="cpu", coop_templates=prompts)
    single = json.loads(study["zero_shot"][name].read_text())
    assert metrics["accuracy"] == single["accuracy"], "the reference accuracy keeps the training prompt"
    assert metrics["coop_prompts"]["templates"] == prompts and 0 <= metrics["coop_prompts"]["accuracy"] <= 100
    assert metrics["config_hash"] != single["config_hash"]

    model = load_clip("demo-vit-tiny", study["backbone"].pretrained).eval()
    tokenizer = open_clip.get_tokenizer("demo-vit-tiny")
    names = ["circle", "square"]
    each = [text_classifier(model, tokenizer, names, prompt) for prompt in prompts]
    ensemble = text_classifier(model, tokenizer, names, prompts)
    expected = torch.nn.functional.normalize(each[0] + each[1], dim=-1)
    assert torch.allclose(ensemble, expected, atol=1e-6) and not torch.allclose(ensemble, each[0])
