"""The method registry and the feature-level families: each family's math pinned on synthetic features or on
a tiny CLIP's feature store, the store's keys and checks, and that no family reads the test labels."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors import safe_open

from complora.configcheck import check_config, load_schema
from complora.data.splits import few_shot_split, write_few_shot_split
from complora.data.testset import DatasetRef
from complora.demo.datasets import DemoSizes, write_demo_world
from complora.errors import ComploraError
from complora.experiment import Backbone, evaluate_zero_shot, load_backbone
from complora.features.store import TEST_FILE, FeatureStore, StoreKey, SupportFeatures, TextFeatures, build_store
from complora.fingerprint import weights_sha256
from complora.fitting import FitSpec, fit_and_evaluate
from complora.methods import clip_adapter, lp_pp, taskres, tip_adapter
from complora.methods.families import AUGMENTATIONS, FAMILIES, FEATURE, store_views, views_needed
from complora.methods.feature import FeatureTask, text_weights
from complora.methods.registry import family_settings, implementation, study_methods
from complora.schedules import dassl_learning_rate
from complora.tensorfile import save_tensors
from test_experiment import save_random_weights

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = load_schema(ROOT / "workflow" / "schemas" / "config.schema.yaml")
FEATURE_FAMILIES = [name for name, family in FAMILIES.items() if family.kind == FEATURE]
DATASET, TEMPLATE = "demo_rare_colors", "a photo of a {}."
# Few views keep the fixture quick; every family reads at most these.
VIEWS = {"tip": 6, "dassl": 3}
QUICK = {
    "tip_adapter": {"augment_views": 4, "search_step": [20, 10]},
    "tip_adapter_f": {"augment_views": 3, "train_views": 3, "epochs": 3, "search_step": [20, 10]},
    "clip_adapter": {"views": 3, "epochs": 5},
    "taskres": {"views": 3, "epochs": 5},
    "lp_pp": {"epochs": 30},
    "zs_lp": {"views": 3, "epochs": 20},
    "clap": {"views": 3, "epochs": 20},
    "linear_probe": {"search_steps": 2},
}


def synthetic_task(classes: int = 3, shots: int = 4, dim: int = 8, seed: int = 0, noise: float = 0.5) -> FeatureTask:
    """A k-shot task on Gaussian clusters around random class directions, text at those directions."""
    generator = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(classes, dim, generator=generator), dim=-1) * 5
    labels = torch.arange(classes).repeat_interleave(shots)

    def draw(count_labels: torch.Tensor) -> torch.Tensor:
        return centres[count_labels] + noise * torch.randn(len(count_labels), dim, generator=generator)

    views = {aug: torch.stack([draw(labels) for _ in range(6)]) for aug in AUGMENTATIONS}
    recipe = {aug: {"scale": list(scale), "views": 6} for aug, scale in AUGMENTATIONS.items()}
    support = SupportFeatures(draw(labels), labels, draw(labels), labels.clone(), views, recipe)
    text = TextFeatures([TEMPLATE], [f"c{i}" for i in range(classes)], centres[None] + 0.1)
    return FeatureTask("synthetic", shots, 1, text.classnames, support, text, TEMPLATE, [TEMPLATE])


def zero_shot_predictions(task: FeatureTask, features: torch.Tensor) -> torch.Tensor:
    weights = text_weights(task.text, [TEMPLATE], "normalized")
    return (F.normalize(features, dim=-1) @ weights.T).argmax(dim=-1)


def fit(family: str, task: FeatureTask, **settings):
    return implementation(family).fit(family, task, family_settings(family, {**QUICK.get(family, {}), **settings}))


def test_schema_defaults_are_each_familys_official_values():
    for family in FEATURE_FAMILIES:
        entry = check_config({"methods": [family]}, SCHEMA)["hyperparameters"][family]
        given = {key: value for key, value in entry.items() if key not in ("family", "datasets", "shots")}
        assert given == implementation(family).DEFAULTS[family], family


def test_a_variant_starts_from_its_familys_entry_and_changes_what_it_names():
    config = check_config(
        {
            "methods": ["zeroshot", "complora", "complora_k8", "taskres_fast"],
            "hyperparameters": {
                "complora": {"iterations_per_shot": 40, "k": 32},
                "complora_k8": {"family": "complora", "k": 8, "shots": [1]},
                "taskres_fast": {"family": "taskres", "epochs": 3},
            },
        },
        SCHEMA,
    )
    methods = study_methods(config)
    assert list(methods) == ["complora", "complora_k8", "taskres_fast"]
    variant = methods["complora_k8"]
    assert (variant.family, variant.settings["k"], variant.settings["iterations_per_shot"]) == ("complora", 8, 40)
    assert variant.shots == (1,) and methods["complora"].shots is None, "grid restrictions are not inherited"
    assert methods["taskres_fast"].settings["epochs"] == 3 and methods["taskres_fast"].settings["views"] == 20
    assert variant.label == "complora_k8" and methods["complora"].label == "Comp-LoRA"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"hyperparameters": {"x": {"family": "adapter"}}}, ["hyperparameters.x.family", "'adapter'", "lora"]),
        ({"hyperparameters": {"x": {"family": "tip_adapter", "rank": 2}}}, ["hyperparameters.x", "rank", "search"]),
        ({"hyperparameters": {"x": {"k": 8}}}, ["hyperparameters.x", "'family' must be given"]),
        ({"methods": ["lora", "y"]}, ["methods[1]", "'y'", "declare it as hyperparameters.y"]),
        ({"hyperparameters": {"x": {"family": "lora", "datasets": ["demo_shapes"]}}}, ["hyperparameters.x.datasets"]),
        ({"hyperparameters": {"lora": {"family": "complora"}}}, ["hyperparameters.lora.family", "its own name"]),
    ],
)
def test_an_unknown_family_key_or_name_stops_the_check_naming_it(change: dict, expected: list[str]):
    config = {"datasets": ["demo_rare_colors"], "methods": ["lora", "x"], **change}
    with pytest.raises(ComploraError) as error:
        check_config(config, SCHEMA)
    for text in expected:
        assert text in str(error.value), (text, str(error.value))


def test_the_store_keeps_the_official_view_counts_or_more():
    assert store_views([{"tip": 10}, {}]) == {"tip": 30}, "a variant reading fewer views leaves the store alone"
    assert store_views([{"dassl": 40}, {"tip": 1}]) == {"dassl": 40, "tip": 30}
    assert store_views([{}]) == {}, "no views of an augmentation no method reads"
    assert views_needed("tip_adapter_f", {"augment_views": 10, "train_views": 20}) == {"tip": 30}


def test_tip_adapter_with_alpha_zero_predicts_what_zero_shot_predicts():
    task = synthetic_task()
    fitted = fit("tip_adapter", task, init_alpha=0.0, search=False)
    test = task.support.val + 3 * torch.randn(task.support.val.shape, generator=torch.Generator().manual_seed(5))
    assert torch.equal(fitted.classifier(test).argmax(-1), zero_shot_predictions(task, test))
    assert fitted.trainable_parameters == 0


def test_tip_adapter_search_follows_the_official_grid_and_tie_rule():
    task = synthetic_task()
    model = fit("tip_adapter", task, search=False).classifier
    alpha, beta, _ = tip_adapter.search(model, task.support.val, task.support.val_labels, [7, 3], [200, 20])
    # Every grid point classifies these separable clusters perfectly: the first one tried wins.
    assert (alpha, beta) == (0.1, 0.1)


def test_taskres_with_a_zero_residual_and_clip_adapter_with_ratio_zero_equal_zero_shot():
    task = synthetic_task()
    test = torch.randn(50, 8, generator=torch.Generator().manual_seed(3))
    base = text_weights(task.text, [TEMPLATE], "raw")
    untrained = taskres.TaskResidual(base, alpha=0.5, scale=100)
    assert torch.equal(untrained(test).argmax(-1), zero_shot_predictions(task, test))
    adapter = fit("clip_adapter", task, ratio=0.0)
    assert isinstance(adapter.classifier, clip_adapter.ClipAdapter)
    assert torch.equal(adapter.classifier(test).argmax(-1), zero_shot_predictions(task, test))
    clap = fit("zs_lp", task, learning_rate=1e-12)  # prototypes that barely move: still zero-shot
    assert torch.equal(clap.classifier(test).argmax(-1), zero_shot_predictions(task, test))


def test_a_linear_probe_separates_separable_features():
    task = synthetic_task(classes=4, shots=8)
    fitted = fit("linear_probe", task)
    assert float((fitted.classifier(task.support.train).argmax(-1) == task.support.train_labels).float().mean()) == 1
    assert fitted.figures["C"] > 0 and fitted.figures["fits"] <= 7 + 2 * 2 + 1


def test_lp_pp_step_sizes_equal_their_formulas_on_a_three_class_case():
    features = F.normalize(torch.tensor([[1.0, 0.0, 0.2], [0.0, 1.0, 0.1], [0.3, 0.3, 1.0], [0.9, 0.1, 0.0]]), dim=-1)
    text = F.normalize(torch.tensor([[1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.2, 1.0]]), dim=-1)
    lr_visual, lr_alpha = lp_pp.step_sizes(features, text)
    f, t = features.double().numpy(), text.double().numpy()
    assert lr_visual == pytest.approx(4 * 4 / np.linalg.eigvalsh(f.T @ f).max(), rel=1e-12)
    assert lr_alpha == pytest.approx(4 / (4 * ((f @ t.T) ** 2).sum(axis=0).max()), rel=1e-12)


def test_lp_pp_starts_at_class_sums_and_keeps_the_best_validation_iteration():
    task = synthetic_task(noise=4.0)
    fitted = fit("lp_pp", task)
    assert 0 <= fitted.figures["best_iteration"] < 30
    assert fitted.figures["val_accuracy"] == round(
        100 * float((fitted.classifier(task.support.val).argmax(-1) == task.support.val_labels).float().mean()), 2
    )
    cumulative = fit("lp_pp", task, alpha_gradient="cumulative")
    assert not torch.equal(cumulative.classifier.alpha, fitted.classifier.alpha)


def test_dassl_schedule_runs_one_warmup_epoch_then_a_shifted_cosine():
    rates = [dassl_learning_rate(epoch, 0.002, 10, 1e-5) for epoch in range(10)]
    assert rates[0] == 1e-5 and rates[1] == 0.002
    assert rates[6] == pytest.approx(0.002 * 0.5 * (1 + math.cos(math.pi * 5 / 10)))


def test_clap_pulls_its_prototypes_towards_zero_shot_more_than_zs_lp():
    task = synthetic_task(noise=4.0)
    drift = {}
    for family in ("zs_lp", "clap"):
        model = fit(family, task, epochs=50).classifier
        drift[family] = (model.prototypes - model.text).norm().item()
    assert drift["clap"] < drift["zs_lp"]


# The feature store of a tiny CLIP on a tiny demo world, and every family fitted through the orchestration.


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("store")
    world = write_demo_world(root / "world", seed=0, sizes=DemoSizes(4, 2, 5, 32))
    checkpoint = save_random_weights(root / "weights.safetensors", seed=0)
    (root / "metadata.json").write_text(json.dumps({"weights_sha256": "tbd"}))
    backbone = Backbone("demo-vit-tiny", str(checkpoint))
    dataset = DatasetRef(DATASET, world / DATASET, world / DATASET / "split.json")
    zero_shot = root / "zeroshot.json"
    evaluate_zero_shot(dataset, backbone, zero_shot, device="cpu")
    splits = []
    for shots in (1, 2):
        path = root / "splits" / f"shots{shots}_seed1.json"
        write_few_shot_split(few_shot_split(dataset.split_file, DATASET, shots, 1), path)
        splits.append(path)
    model, tokenizer, transform = load_backbone(backbone, torch.device("cpu"))
    (root / "metadata.json").write_text(json.dumps({"weights_sha256": weights_sha256(model)}))
    build_store(dataset, model, tokenizer, transform, splits, [TEMPLATE], VIEWS, root / "features")
    return {"root": root, "dataset": dataset, "backbone": backbone, "zero_shot": zero_shot, "splits": splits,
            "transform": transform, "weights": weights_sha256(model)}  # fmt: skip


def fit_spec(store: dict, family: str, features: Path | None = None, **settings) -> FitSpec:
    return FitSpec(
        dataset=store["dataset"],
        name=family,
        family=family,
        settings=family_settings(family, {**QUICK.get(family, {}), **settings}),
        backbone=store["backbone"],
        features=features or store["root"] / "features",
        few_shot_files=store["splits"],
        zero_shot_run=store["zero_shot"],
        model_metadata=store["root"] / "metadata.json",
        template=TEMPLATE,
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tip_adapter_with_alpha_zero_reproduces_the_zero_shot_runs_predictions(store: dict, tmp_path: Path):
    runs = fit_and_evaluate(fit_spec(store, "tip_adapter", init_alpha=0.0, search=False), tmp_path)
    zero_shot = json.loads(store["zero_shot"].read_text())
    assert [run["predictions_sha256"] for run in runs] == [zero_shot["predictions_sha256"]] * 2
    assert all(run["accuracy"] == zero_shot["accuracy"] and run["gain"] == 0 for run in runs)
    assert runs[0]["retention_status"] == "encoders unchanged" and runs[0]["retention"] == {}


@pytest.mark.parametrize("family", FEATURE_FAMILIES)
def test_no_family_reads_the_test_labels_and_fits_are_reproducible(family: str, store: dict, tmp_path: Path):
    fit_and_evaluate(fit_spec(store, family), tmp_path / "clean")
    poisoned = tmp_path / "poisoned_store"
    poisoned.mkdir()
    for path in (store["root"] / "features").iterdir():
        (poisoned / path.name).write_bytes(path.read_bytes())
    key = StoreKey(DATASET, store["weights"], store["transform"].sha256)
    features = FeatureStore(poisoned, key, store["dataset"].split_file).test()

    with safe_open(str(poisoned / TEST_FILE), framework="pt") as handle:
        metadata = handle.metadata()
    save_tensors({"features": features.features, "labels": (features.labels + 1) % 5}, poisoned / TEST_FILE, metadata)
    runs = fit_and_evaluate(fit_spec(store, family, features=poisoned), tmp_path / "poisoned")
    fit_and_evaluate(fit_spec(store, family), tmp_path / "again")
    for shots in (1, 2):
        cell = f"shots{shots}/seed1/classifier.safetensors"
        assert digest(tmp_path / "clean" / cell) == digest(tmp_path / "poisoned" / cell), "test labels were read"
        assert digest(tmp_path / "clean" / cell) == digest(tmp_path / "again" / cell), "the fit is not reproducible"
    assert {run["method"] for run in runs} == {family} and all(run["family"] == family for run in runs)


def test_views_are_the_same_whatever_the_number_stored(store: dict, tmp_path: Path):
    model, tokenizer, transform = load_backbone(store["backbone"], torch.device("cpu"))
    build_store(store["dataset"], model, tokenizer, transform, store["splits"][:1], [TEMPLATE], {"tip": 2}, tmp_path)
    key = StoreKey(DATASET, store["weights"], transform.sha256)
    fewer = FeatureStore(tmp_path, key, store["dataset"].split_file).support(store["splits"][0])
    more = FeatureStore(store["root"] / "features", key, store["dataset"].split_file).support(store["splits"][0])
    assert torch.equal(fewer.views["tip"], more.views["tip"][:2])
    assert torch.equal(fewer.train, more.train) and not torch.equal(more.views["tip"][0], more.views["tip"][1])
    with pytest.raises(ComploraError, match="holds 2 'tip' views per image, 3 are needed"):
        fewer.augmented("tip", 3)


def test_a_stale_or_foreign_store_is_refused_naming_what_differs(store: dict, tmp_path: Path):
    transform = store["transform"]
    other_weights = StoreKey(DATASET, "0" * 64, transform.sha256)
    with pytest.raises(ComploraError, match="stale or foreign: weights_sha256"):
        FeatureStore(store["root"] / "features", other_weights, store["dataset"].split_file).test()
    other_dataset = StoreKey("demo_shapes", store["weights"], transform.sha256)
    with pytest.raises(ComploraError, match="dataset 'demo_rare_colors'"):
        FeatureStore(store["root"] / "features", other_dataset, store["dataset"].split_file).text()
    changed_split = tmp_path / "split.json"
    split = json.loads(store["dataset"].split_file.read_text())
    split["test"] = split["test"][:-1]
    changed_split.write_text(json.dumps(split))
    key = StoreKey(DATASET, store["weights"], transform.sha256)
    with pytest.raises(ComploraError, match="another split file"):
        FeatureStore(store["root"] / "features", key, changed_split).test()
    with safe_open(str(store["root"] / "features" / TEST_FILE), framework="pt") as handle:
        record = json.loads(handle.metadata()["complora"])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    old_libraries = tmp_path / "old"
    old_libraries.mkdir()
    record["libraries"] = {**record["libraries"], "pillow": "9.0.0"}
    save_tensors(tensors, old_libraries / TEST_FILE, {"complora": json.dumps(record)})
    with pytest.raises(ComploraError, match="image libraries"):
        FeatureStore(old_libraries, key, store["dataset"].split_file).test()
    metadata = store["root"] / "other.json"
    metadata.write_text(json.dumps({"weights_sha256": "1" * 64}))
    spec = fit_spec(store, "lp_pp")
    with pytest.raises(ComploraError, match="stale"):
        fit_and_evaluate(FitSpec(**{**spec.__dict__, "model_metadata": metadata}), tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing is written for a refused store"


def test_a_store_is_built_whole_and_never_over_another_folder(store: dict, tmp_path: Path):
    model, tokenizer, transform = load_backbone(store["backbone"], torch.device("cpu"))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(ComploraError, match="is not a feature store"):
        build_store(store["dataset"], model, tokenizer, transform, [], [TEMPLATE], {}, foreign)
    assert [path.name for path in foreign.iterdir()] == ["notes.txt"]
    build_store(store["dataset"], model, tokenizer, transform, store["splits"][:1], [TEMPLATE], {}, tmp_path / "s")
    build_store(store["dataset"], model, tokenizer, transform, [], [TEMPLATE], {}, tmp_path / "s")
    assert sorted(path.name for path in (tmp_path / "s").iterdir()) == ["test.safetensors", "text.safetensors"], (
        "a rebuild replaces the whole store: no support file of the previous build is left beside the new ones"
    )
    assert not list(tmp_path.glob(".s.staging-*"))


def test_a_split_without_training_images_of_a_class_is_refused(store: dict, tmp_path: Path):
    split = json.loads(store["splits"][0].read_text())
    split["train"] = [entry for entry in split["train"] if entry[1] != 2]
    lacking = tmp_path / "shots1_seed1.json"
    lacking.write_text(json.dumps(split))
    model, tokenizer, transform = load_backbone(store["backbone"], torch.device("cpu"))
    build_store(store["dataset"], model, tokenizer, transform, [lacking], [TEMPLATE], VIEWS, tmp_path / "f")
    spec = fit_spec(store, "clap", features=tmp_path / "f")
    with pytest.raises(ComploraError, match=r"no training image of class\(es\) \[2\]"):
        fit_and_evaluate(FitSpec(**{**spec.__dict__, "few_shot_files": [lacking]}), tmp_path / "out")


def test_the_fit_verb_refuses_unknown_settings_by_name(store: dict, tmp_path: Path, capsys: pytest.CaptureFixture):
    from complora.cli import main

    code = main(["fit", "--dataset", DATASET, "--data", str(store["dataset"].root), "--split-file",
                 str(store["dataset"].split_file), "--model", "demo-vit-tiny", "--pretrained", "x", "--family",
                 "taskres", "--settings", json.dumps({"epochs": 2, "rank": 4}), "--features", str(tmp_path),
                 "--model-metadata", "m.json", "--few-shot", "s.json", "--zero-shot", "z.json", "--out-root",
                 str(tmp_path)])  # fmt: skip
    assert code == 2 and "unknown taskres setting(s) ['rank']" in capsys.readouterr().err
    code = main(["fit", "--dataset", DATASET, "--data", "d", "--split-file", "s", "--model", "demo-vit-tiny",
                 "--pretrained", "x", "--family", "clap", "--settings", '{"epochs": "many"}', "--features", "f",
                 "--model-metadata", "m", "--few-shot", "s", "--zero-shot", "z", "--out-root", "o"])  # fmt: skip
    assert code == 2 and "clap setting epochs: 'many' is not of the kind of its default 300" in capsys.readouterr().err


def _merged(base: dict, override: dict) -> dict:
    """Snakemake's --configfile merge: mappings merged key by key, everything else replaced."""
    merged = dict(base)
    for key, value in override.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = _merged(base[key], value) if both else value
    return merged


def test_demo_config_runs_every_family_and_its_k_sweep_file_declares_the_variants():
    demo = yaml.safe_load((ROOT / "config.yaml").read_text())
    lora, complora = demo["hyperparameters"]["lora"], demo["hyperparameters"]["complora"]
    assert {key: complora[key] for key in lora} == lora, "the demo trains both methods with the same hyperparameters"
    methods = study_methods(check_config(copy.deepcopy(demo), SCHEMA))
    prompt_families = {name for name, family in FAMILIES.items() if family.kind == "prompt"}
    assert {method.family for method in methods.values()} >= set(FEATURE_FAMILIES) | {
        "lora",
        "complora",
    } | prompt_families
    sweep = check_config(_merged(demo, yaml.safe_load((ROOT / "config/demo_k_sweep.yaml").read_text())), SCHEMA)
    ks = sorted(method.settings["k"] for method in study_methods(sweep).values() if method.family == "complora")
    assert ks == [8, 16, 32, 64]
    assert set(methods) < set(study_methods(sweep)), "the sweep keeps every method of the demo"
