"""Prompt learning (CoOp, KgCoOp, CoCoOp) and the base-to-new protocol: zero steps of CoOp are zero-shot CLIP,
only the context (and CoCoOp's Meta-Net) learns, KgCoOp's extra loss starts at zero, the base/new split is
fixed by the labels, and every kind of method reports base, new and harmonic-mean accuracy."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch

from complora.checkpoint import Checkpointing
from complora.cli import main
from complora.data.base_to_new import base_classes, class_groups, harmonic_mean
from complora.data.images import normalize
from complora.data.splits import few_shot_split, write_few_shot_split
from complora.data.testset import DatasetRef
from complora.demo.datasets import DemoSizes, write_demo_world
from complora.errors import ComploraError
from complora.evaluation import text_classifier, within_groups
from complora.experiment import Backbone, PromptSpec, evaluate_zero_shot, learn_prompts_and_evaluate
from complora.finetune import SGD_DASSL, FinetuneSettings, train_loop
from complora.methods.families import FAMILIES, PROMPT
from complora.methods.prompt_learning import DEFAULTS, Objective, resolve
from complora.methods.registry import family_settings
from complora.models import load_clip
from complora.schedules import dassl_learning_rate
from complora.stopping import JobStopped, StopSignals
from complora.tensorfile import save_tensors
from helpers import image_set, sigterm_on_call

PROMPT_FAMILIES = [name for name, family in FAMILIES.items() if family.kind == PROMPT]
CLASSES = ["pink shape", "cyan shape", "brown shape", "gray shape", "lime shape"]
TARGET = "demo_rare_colors"


def tiny_model():
    model = load_clip("demo-vit-tiny", "none", seed=0).eval()
    return model, open_clip.get_tokenizer("demo-vit-tiny")


def objective(family: str, model, tokenizer, **settings) -> Objective:
    resolved = resolve(family, TARGET, 16, {**DEFAULTS[family], **settings}, ["a photo of a {}."])
    return Objective(
        family,
        model,
        tokenizer,
        CLASSES,
        resolved,
        seed=1,
        normalize=lambda crops: normalize(crops, torch.zeros(3, 1, 1), torch.ones(3, 1, 1)),
    )


def test_coop4_at_step_zero_predicts_what_zero_shot_with_a_photo_of_a_predicts():
    model, tokenizer = tiny_model()
    learned = objective("coop4", model, tokenizer).classifier(CLASSES)
    zero_shot = text_classifier(model, tokenizer, CLASSES, "a photo of a {}.")
    assert torch.allclose(learned, zero_shot, atol=1e-6)
    images = torch.nn.functional.normalize(
        torch.randn(64, zero_shot.shape[1], generator=torch.Generator().manual_seed(0)), dim=-1
    )
    assert torch.equal((images @ learned.T).argmax(-1), (images @ zero_shot.T).argmax(-1))


@pytest.mark.parametrize("family", PROMPT_FAMILIES)
def test_only_the_context_and_the_meta_net_receive_gradients(family: str):
    model, tokenizer = tiny_model()
    learner = objective(family, model, tokenizer)
    crops = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    learner.loss(crops, torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    trained = dict(learner.learner.named_parameters())
    expected = {"context"} | ({"meta_net.0.weight", "meta_net.0.bias", "meta_net.2.weight", "meta_net.2.bias"}
                              if family == "cocoop" else set())  # fmt: skip
    assert set(trained) == expected
    for name, parameter in trained.items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    width = model.token_embedding.weight.shape[1]
    assert learner.learner.context.shape == (16 if family == "coop16" else 4, width)


def test_kgcoop_knowledge_loss_is_zero_at_initialisation_and_grows_with_the_context():
    model, tokenizer = tiny_model()
    learner = objective("kgcoop", model, tokenizer)
    with torch.no_grad():
        assert abs(float(learner.knowledge_loss(learner.text_features()))) < 1e-6
        learner.learner.context.add_(torch.randn_like(learner.learner.context))
        assert float(learner.knowledge_loss(learner.text_features())) > 1e-3


def test_settings_whose_null_has_a_meaning_are_accepted_and_resolved():
    assert family_settings("coop4", {"context_init": None})["context_init"] is None
    assert resolve("kgcoop", "OxfordPets", 4, family_settings("kgcoop", {"epochs": None}), ["x {}."])["epochs"] == 100
    assert resolve("coop16", "ImageNet", 16, DEFAULTS["coop16"], ["x {}."])["epochs"] == 50
    with pytest.raises(ValueError, match="batch_size"):
        family_settings("coop4", {"batch_size": None})


def test_kgcoop_targets_its_own_hand_crafted_prompt_per_dataset():
    def target(dataset: str, coop: list[str]) -> str:
        return resolve("kgcoop", dataset, 16, DEFAULTS["kgcoop"], coop)["hand_crafted_template"]

    assert target("DTD", ["{} texture."]) == "a photo of a {}, a type of texture."
    assert target("OxfordPets", ["a photo of a {}, a type of pet."]) == "a photo of a {}, a type of pet."
    assert target("ImageNet", ["itap of a {}.", "a origami {}."]) == "a photo of a {}."
    assert "hand_crafted_template" not in resolve("coop4", "DTD", 16, DEFAULTS["coop4"], ["{} texture."])


def test_a_stopped_cocoop_run_resumes_from_its_checkpoint_to_the_same_context_and_meta_net(tmp_path: Path):
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (10, 32, 32, 3), dtype=torch.uint8, generator=generator)
    images = image_set(tmp_path / "images", pixels, torch.arange(10) % 5)
    settings = FinetuneSettings(iterations=12, batch_size=1, optimizer=SGD_DASSL, epoch_steps=4, learning_rate=0.05)

    def learner_after(stop_at: int | None, checkpointing: Checkpointing | None) -> tuple[Objective, dict]:
        model, tokenizer = tiny_model()
        made = objective("cocoop", model, tokenizer)
        if stop_at is not None:
            sigterm_on_call(model.visual, stop_at)
            with StopSignals() as stop, pytest.raises(JobStopped, match="at training step 7 of 12"):
                train_loop(made.learner, made.loss, images, settings, 3, device=torch.device("cpu"),
                           checkpointing=checkpointing, stop=stop)  # fmt: skip
            return made, {}
        figures = train_loop(made.learner, made.loss, images, settings, 3, device=torch.device("cpu"),
                             checkpointing=checkpointing)  # fmt: skip
        return made, figures

    whole, expected = learner_after(None, None)
    checkpointing = Checkpointing(tmp_path / "checkpoint.pt", every=5, identity="cocoop-run")
    learner_after(7, checkpointing)
    resumed, figures = learner_after(None, checkpointing)
    assert figures["resumed_at_step"] == 7 and figures["final_loss"] == expected["final_loss"]
    for (name, a), b in zip(whole.learner.named_parameters(), resumed.learner.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert figures["curve"] == expected["curve"]


def test_an_init_of_another_length_than_the_context_is_refused():
    model, tokenizer = tiny_model()
    with pytest.raises(ComploraError, match="context_init 'a photo of a' is 4 token"):
        objective("coop4", model, tokenizer, context_length=6)


def test_the_dassl_schedule_runs_per_epoch_in_the_shared_loop():
    settings = FinetuneSettings(iterations=12, learning_rate=0.002, optimizer=SGD_DASSL, epoch_steps=3)
    optimizer, schedule = settings.optimizer_and_schedule([torch.nn.Parameter(torch.zeros(1))], torch.device("cpu"))
    rates = []
    for _ in range(12):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    expected = [dassl_learning_rate(step // 3, 0.002, 4, 1e-5) for step in range(12)]
    assert rates == pytest.approx(expected)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["weight_decay"] == settings.weight_decay
    with pytest.raises(ComploraError, match="whole number of epochs"):
        FinetuneSettings(iterations=10, optimizer=SGD_DASSL, epoch_steps=3)


def test_schema_defaults_are_the_official_prompt_learning_values():
    from complora.configcheck import check_config, load_schema
    from workflow_project import ROOT

    schema = load_schema(ROOT / "workflow/schemas/config.schema.yaml")
    for family in PROMPT_FAMILIES:
        entry = check_config({"methods": [family]}, schema)["hyperparameters"][family]
        assert {k: v for k, v in entry.items() if k != "family"} == DEFAULTS[family], family
    assert DEFAULTS["coop4"]["learning_rate"] == 0.002 and DEFAULTS["kgcoop"]["kg_weight"] == 8.0
    assert (DEFAULTS["cocoop"]["batch_size"], DEFAULTS["cocoop"]["epochs"]) == (1, 10)


def test_the_base_new_split_is_the_first_half_of_the_labels_rounded_up():
    assert [base_classes(n) for n in (2, 5, 6, 37, 100, 397, 1000)] == [1, 3, 3, 19, 50, 199, 500]
    assert class_groups(5) == ["base"] * 3 + ["new"] * 2
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140) and harmonic_mean(0.0, 0.0) == 0.0
    logits = torch.tensor([[0.0, 5.0, 1.0, 9.0], [9.0, 0.0, 2.0, 1.0]])
    groups = torch.tensor([0, 0, 1, 1])
    # Image 0 (a base class) is classified among the base classes, image 1 (a new class) among the new ones.
    assert within_groups(logits, torch.tensor([0, 2]), groups).tolist() == [1, 2]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("prompts")
    world = write_demo_world(root / "world", seed=0, sizes=DemoSizes(4, 2, 4, 32))
    checkpoint = root / "weights.safetensors"
    save_tensors(dict(load_clip("demo-vit-tiny", "none", seed=0).state_dict()), checkpoint, {"format": "open_clip"})
    return {"root": root, "world": world, "backbone": Backbone("demo-vit-tiny", str(checkpoint)),
            "dataset": DatasetRef(TARGET, world / TARGET, world / TARGET / "split.json")}  # fmt: skip


def test_base_to_new_splits_draw_base_classes_only_and_repeat_byte_for_byte(world: dict, tmp_path: Path):
    split_file = world["world"] / TARGET / "split.json"
    split = few_shot_split(split_file, TARGET, 2, 1, "base_to_new")
    assert split["classnames"] == CLASSES[:3] and (split["base_classes"], split["all_classes"]) == (3, 5)
    assert {label for _, label, _ in split["train"] + split["val"]} == {0, 1, 2}
    write_few_shot_split(split, tmp_path / "a.json")
    write_few_shot_split(few_shot_split(split_file, TARGET, 2, 1, "base_to_new"), tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert "protocol" not in few_shot_split(split_file, TARGET, 2, 1), "an all-class split is written as before"


def test_prompt_runs_under_both_protocols_and_resume_exactly(world: dict, tmp_path: Path):
    split_file = world["world"] / TARGET / "split.json"
    for protocol in ("all", "base_to_new"):
        zero_shot = tmp_path / protocol / "zs.json"
        reference = evaluate_zero_shot(world["dataset"], world["backbone"], zero_shot, device="cpu", protocol=protocol)
        few_shot = tmp_path / protocol / "split.json"
        write_few_shot_split(few_shot_split(split_file, TARGET, 4, 1, protocol), few_shot)
        settings = family_settings("coop4", {"epochs": 3, "batch_size": 8})
        spec = PromptSpec(world["dataset"], few_shot, world["backbone"], "coop4", settings, 1, zero_shot)
        run = learn_prompts_and_evaluate(spec, tmp_path / protocol / "run", device="cpu")
        assert run["protocol"] == protocol and run["retention_status"] == "encoders unchanged"
        assert run["iterations"] == 3 * (len(CLASSES if protocol == "all" else CLASSES[:3]) * 4 // 8)
        if protocol == "all":
            all_classes = reference["accuracy"]
        else:
            assert reference["accuracy"] == reference["base_accuracy"]
            assert reference["all_classes_accuracy"] == all_classes, "the same model on every class: retention's base"
            assert run["harmonic_mean"] == round(harmonic_mean(run["base_accuracy"], run["new_accuracy"]), 2)
            assert run["classes"] == 5 and run["config"]["protocol"] == "base_to_new"
    # CoCoOp repeats exactly on the CPU, with checkpoints written or not.
    spec = PromptSpec(
        world["dataset"], few_shot, world["backbone"], "cocoop", family_settings("cocoop", {"epochs": 2}), 1, zero_shot
    )
    whole = learn_prompts_and_evaluate(spec, tmp_path / "whole", device="cpu")
    again = learn_prompts_and_evaluate(spec, tmp_path / "again", device="cpu", checkpoint_every=5)
    assert again["predictions_sha256"] == whole["predictions_sha256"]
    assert again["final_loss"] == whole["final_loss"] and again["new_accuracy"] == whole["new_accuracy"]
    assert not (tmp_path / "again" / "checkpoint.pt").exists() and (tmp_path / "again" / "prompt.safetensors").is_file()


def test_a_zero_shot_run_of_the_other_protocol_is_refused(world: dict, tmp_path: Path):
    zero_shot = tmp_path / "zs.json"
    evaluate_zero_shot(world["dataset"], world["backbone"], zero_shot, device="cpu")
    few_shot = tmp_path / "split.json"
    write_few_shot_split(few_shot_split(world["world"] / TARGET / "split.json", TARGET, 1, 1, "base_to_new"), few_shot)
    spec = PromptSpec(
        world["dataset"], few_shot, world["backbone"], "coop4", family_settings("coop4", {}), 1, zero_shot
    )
    with pytest.raises(ComploraError, match="--protocol base_to_new"):
        learn_prompts_and_evaluate(spec, tmp_path / "run", device="cpu")


def test_the_prompt_verb_refuses_an_unknown_setting_by_name(world: dict, tmp_path: Path, capsys):
    dataset = world["dataset"]
    code = main(
        ["prompt", "--dataset", TARGET, "--data", str(dataset.root), "--split-file", str(dataset.split_file),
         "--model", "demo-vit-tiny", "--pretrained", world["backbone"].pretrained, "--few-shot",
         str(tmp_path / "none.json"), "--seed", "1", "--family", "kgcoop", "--settings", '{"kg_wieght": 2}',
         "--zero-shot", str(tmp_path / "zs.json"), "--out-dir", str(tmp_path)]
    )  # fmt: skip
    assert code == 2 and "kg_wieght" in capsys.readouterr().err
