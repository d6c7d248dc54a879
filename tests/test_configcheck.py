"""The experiment config: defaults come from the schema; each mistake is named with what is allowed."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from complora.cli import main
from complora.configcheck import check_config, load_schema
from complora.configdocs import config_reference
from complora.data.registry import PAPER_DATASETS
from complora.demo.tasks import TASKS
from complora.errors import ComploraError

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = load_schema(ROOT / "workflow" / "schemas" / "config.schema.yaml")
KNOWN = (*TASKS, *PAPER_DATASETS)


def test_empty_config_gets_every_default():
    config = check_config({}, SCHEMA)
    assert config["methods"] == ["zeroshot", "lora", "complora"]
    assert config["shots"] == [1, 2, 4, 8, 16] and config["seeds"] == [1, 2, 3]
    lora = config["hyperparameters"]["lora"]
    assert lora == {
        "family": "lora",
        "iterations_per_shot": 500,
        "batch_size": 32,
        "learning_rate": 2e-4,
        "weight_decay": 1e-2,
        "min_learning_rate": 1e-6,
        "logit_scale": 100,
        "rank": 2,
        "alpha": 1,
        "scaling": "sqrt",
        "dropout": 0.25,
        "targets": ["q", "k", "v"],
        "towers": ["vision", "text"],
    }
    assert config["hyperparameters"]["complora"] == {**lora, "family": "complora", "k": 32, "side": "both"}
    assert config["demo"]["pretraining"]["steps"] == 700


def test_defaults_are_not_shared_between_configs():
    first = check_config({}, SCHEMA)
    first["hyperparameters"]["lora"]["targets"].append("o")
    assert check_config({}, SCHEMA)["hyperparameters"]["lora"]["targets"] == ["q", "k", "v"]


def test_shipped_configs_are_valid():
    for path in (ROOT / "config.yaml", ROOT / "tests" / "workflow" / "reduced_config.yaml"):
        config = yaml.safe_load(path.read_text())
        original = copy.deepcopy(config)
        check_config(config, SCHEMA, str(path))
        for key, value in original.items():
            if not isinstance(value, dict):
                assert config[key] == value, "given values are kept"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"methods": ["zeroshot", "lora", "prompt-tuning"]},
            ["methods[2]", "'prompt-tuning'", "zeroshot, lora, complora"],
        ),
        ({"datasets": ["demo_shapes", "imagenet"]}, ["datasets[1]", "'imagenet'", "demo_night_shapes", "ImageNet"]),
        ({"retention_datasets": ["caltech"]}, ["retention_datasets[0]", "demo_colors"]),
        ({"shots": [1, -4]}, ["shots[1]", "-4", ">= 1"]),
        ({"seeds": [-1]}, ["seeds[0]", ">= 0"]),
        ({"shots": "16"}, ["shots", "expected array", "'16'"]),
        ({"hyperparameters": {"lora": {"rank": "two"}}}, ["hyperparameters.lora.rank", "expected integer", "'two'"]),
        ({"hyperparameters": {"complora": {"side": "left"}}}, ["hyperparameters.complora.side", "both, input, output"]),
        (
            {"hyperparameters": {"lora": {"learning_rate": "1e-4"}}},
            ["hyperparameters.lora.learning_rate", "write 1.0e-4"],
        ),
        ({"hyperparamters": {}}, ["unknown key(s) hyperparamters", "allowed keys", "hyperparameters"]),
        ({"hyperparameters": {"lora": {"k": 8}}}, ["hyperparameters.lora", "unknown key(s) k"]),
        ({"prompt_template": "a photo"}, ["prompt_template", "regular expression"]),
    ],
)
def test_bad_values_are_named_with_the_allowed_ones(config: dict, expected: list[str]):
    with pytest.raises(ComploraError) as error:
        check_config(config, SCHEMA, "my.yaml", datasets=KNOWN)
    message = str(error.value)
    assert message.startswith("my.yaml is not a valid experiment config")
    for text in expected:
        assert text in message, (text, message)


def test_custom_dataset_names_are_allowed():
    config = {"datasets": ["mine", "EuroSAT"], "custom_datasets": {"mine": {"images": "/data/mine"}}}
    check_config(config, SCHEMA, datasets=KNOWN)
    assert config["custom_datasets"]["mine"] == {"images": "/data/mine", "split_file": None, "classnames": None,
                                                 "seed": 0}  # fmt: skip
    for taken in ("EuroSAT", "demo_shapes", "demo_world"):
        with pytest.raises(ComploraError, match=f"custom_datasets.{taken}: the name is taken"):
            check_config({"custom_datasets": {taken: {"images": "x"}}}, SCHEMA, datasets=KNOWN)
    with pytest.raises(ComploraError, match="custom_datasets"):
        check_config({"custom_datasets": {"my/data": {"images": "x"}}}, SCHEMA, datasets=KNOWN)
    with pytest.raises(ComploraError, match=r"custom_datasets\.mine: unknown key\(s\) folder"):
        check_config({"custom_datasets": {"mine": {"images": "x", "folder": "y"}}}, SCHEMA, datasets=KNOWN)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ComploraError) as error:
        check_config({"methods": ["bogus"], "shots": [0]}, SCHEMA)
    assert "methods[0]" in str(error.value) and "shots[0]" in str(error.value)


def _undocumented(properties: dict, prefix: str = "") -> list[str]:
    missing = []
    for name, subschema in properties.items():
        if "$ref" in subschema:
            node = SCHEMA
            for part in subschema["$ref"][2:].split("/"):
                node = node[part]
            subschema = {**node, **subschema}
        if "description" not in subschema:
            missing.append(f"{prefix}{name}")
        missing += _undocumented(subschema.get("properties", {}), f"{prefix}{name}.")
        entries = subschema.get("additionalProperties")
        if isinstance(entries, dict):
            missing += _undocumented(entries.get("properties", {}), f"{prefix}{name}.<name>.")
    return missing


def test_every_config_key_is_described():
    assert _undocumented(SCHEMA["properties"]) == []
    for family, definition in SCHEMA["$defs"]["families"].items():
        properties = {k: v for k, v in definition["properties"].items() if k != "family"}
        assert _undocumented(properties, f"{family}.") == []


def test_config_readme_is_generated_from_the_schema(tmp_path: Path, capsys):
    schema = ["--schema", str(ROOT / "workflow" / "schemas" / "config.schema.yaml")]
    assert main(["config-docs", "--check", *schema, "--out", str(ROOT / "config" / "README.md")]) == 0, (
        "config/README.md is stale: run `complora config-docs`"
    )
    page = config_reference(SCHEMA)
    for key in ("`comparisons.reference`", "`data.eval_cache`", "`custom_datasets.<name>.images`", "### `clap`"):
        assert key in page, key
    assert "| `k` | integer (>= 0) | `32` | principal directions protected per matrix and side |" in page
    edited = tmp_path / "README.md"
    edited.write_text(page.replace("principal directions", "directions"))
    assert main(["config-docs", "--check", *schema, "--out", str(edited)]) == 2
    assert "is not what" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("reference", "expected"),
    [("lorra", "comparisons.reference: 'lorra' is neither a method family"), ("zeroshot", "no seeds to pair")],
)
def test_a_comparisons_reference_that_names_no_method_is_refused(reference: str, expected: str):
    with pytest.raises(ComploraError, match=expected):
        check_config({"comparisons": {"reference": reference}}, SCHEMA)
    assert check_config({"comparisons": {"reference": "clap"}}, SCHEMA)["comparisons"]["level"] == 0.95
