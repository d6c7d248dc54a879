"""Checking an experiment config against its JSON schema, filling the schema's defaults.

Every problem is reported at once, each naming the key (``hyperparameters.lora.rank``, ``shots[0]``) and
what would be accepted, so a bad config stops a run before any job starts.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators

from .errors import ComploraError
from .methods.registry import declare_methods, method_problems


def _local_reference(root: dict[str, Any], reference: str) -> dict[str, Any]:
    """The subschema a ``#/...`` JSON pointer names (the only kind of reference our schemas use)."""
    if not reference.startswith("#/"):
        raise ComploraError(f"config schema: only local references (#/...) are supported, got {reference!r}")
    node: Any = root
    for part in reference[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _with_defaults(validator_class: type, root: dict[str, Any]) -> type:
    """A validator that also writes each property's ``default`` into the instance before checking it."""
    check_properties = validator_class.VALIDATORS["properties"]

    def properties(validator: Any, schema_properties: dict, instance: Any, schema: dict) -> Any:
        if isinstance(instance, dict):
            for name, subschema in schema_properties.items():
                if "$ref" in subschema:
                    subschema = _local_reference(root, subschema["$ref"])
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from check_properties(validator, schema_properties, instance, schema)

    return validators.extend(validator_class, {"properties": properties})


def _key(path: Any) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "(top level)"


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _describe(error: Any) -> str:
    kind, value, expected = error.validator, error.instance, error.validator_value
    if kind == "enum":
        return f"{value!r} is not allowed; allowed values: {', '.join(map(str, expected))}"
    if kind == "type":
        wanted = " or ".join(expected) if isinstance(expected, list) else expected
        hint = ""
        if "number" in wanted and isinstance(value, str) and _is_float(value) and "e" in value.lower():
            mantissa, exponent = value.lower().split("e", 1)
            fixed = f"{mantissa if '.' in mantissa else mantissa + '.0'}e{exponent}"
            hint = f" (YAML reads {value} as text; write {fixed})"
        return f"expected {wanted}, got {value!r}{hint}"
    if kind in ("minimum", "exclusiveMinimum"):
        return f"{value!r} is too small; it must be {'>=' if kind == 'minimum' else '>'} {expected}"
    if kind in ("maximum", "exclusiveMaximum"):
        return f"{value!r} is too large; it must be {'<=' if kind == 'maximum' else '<'} {expected}"
    if kind == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(value) - set(known))
        return f"unknown key(s) {', '.join(unknown)}; allowed keys: {', '.join(known)}"
    if kind == "uniqueItems":
        return f"{value!r} lists an entry twice"
    if kind == "minItems":
        return f"{value!r} must list at least {expected} entr{'y' if expected == 1 else 'ies'}"
    if kind == "required":
        return f"{', '.join(repr(name) for name in expected if name not in value)} must be given"
    if kind == "pattern":
        return f"{value!r} must match the regular expression {expected}"
    return error.message


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A config file's settings, or one error naming the file (and, for bad YAML, the line) and the fix."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ComploraError(f"config file {path} cannot be read ({error.strerror}); check the path") from None
    try:
        settings = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ComploraError(f"config file {path}{where}: {problem}; fix the YAML there") from None
    if not isinstance(settings, dict):
        kind = "empty" if settings is None else f"a {type(settings).__name__}"
        raise ComploraError(f"config file {path} is {kind}; it must map setting names to values (key: value)")
    return settings


def load_schema(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ComploraError(f"config schema {path} cannot be read ({error})") from error


DATASET_KEYS = ("datasets", "retention_datasets")


RESERVED_NAMES = ("demo_world",)  # the demo world's folder under resources/data


def _dataset_problems(config: dict[str, Any], known: Sequence[str]) -> list[str]:
    """Custom names that clash with built-in ones, and names in the dataset lists that are neither."""
    custom = list(config.get("custom_datasets", {}))
    problems = [
        f"  - custom_datasets.{name}: the name is taken by a built-in dataset; choose another"
        for name in custom
        if name in known or name in RESERVED_NAMES
    ]
    allowed = [*known, *custom]
    problems += [
        f"  - {key}[{index}]: {name!r} is not allowed; allowed values: {', '.join(allowed)}"
        for key in DATASET_KEYS
        for index, name in enumerate(config.get(key) or [])
        if isinstance(name, str) and name not in allowed
    ]
    return problems


# The adapted matrices of a tower are width x width (attention projections): their rank.
ADAPTER_FAMILIES = ("lora", "complora")


def architecture_config(model: str) -> dict[str, Any] | None:
    """An open_clip architecture's JSON config, read without importing open_clip (or torch): complora's own
    configs, open_clip's shipped ones, or a JSON file. None where it cannot be found (the weights job says so)."""
    candidates = [Path(model), Path(__file__).parent / "model_configs" / f"{model}.json"]
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(spec.submodule_search_locations[0]) / "model_configs" / f"{model}.json")
    for candidate in candidates:
        if candidate.suffix == ".json" and candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except (OSError, json.JSONDecodeError):
                return None
    return None


def _matrix_problems(config: dict[str, Any]) -> list[str]:
    """Adapter settings the backbone's matrices cannot hold: a rank or a Comp-LoRA k above a matrix's rank
    (refused here, before a job fails on them)."""
    architecture = architecture_config(str((config.get("backbone") or {}).get("model")))
    methods = config.get("methods") or []
    if architecture is None:
        return []
    problems = []
    for name, entry in (config.get("hyperparameters") or {}).items():
        if name not in methods or not isinstance(entry, dict) or entry.get("family") not in ADAPTER_FAMILIES:
            continue
        widths = {tower: (architecture.get(f"{tower}_cfg") or {}).get("width") for tower in entry.get("towers") or []}
        widths = {tower: width for tower, width in widths.items() if isinstance(width, int)}
        if not widths:
            continue
        tower, width = min(widths.items(), key=lambda item: item[1])
        for key in ("rank", "k"):
            value = entry.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > width:
                problems.append(
                    f"  - hyperparameters.{name}.{key}: {value} is above the rank of the {tower} tower's matrices "
                    f"({width} x {width} in {config['backbone']['model']}); choose {width} or less"
                )
    return problems


def check_config(
    config: dict[str, Any], schema: dict[str, Any], source: str = "config", datasets: Sequence[str] | None = None
) -> dict[str, Any]:
    """Fill ``config`` in place with the schema's defaults and check it; with ``datasets`` (the known names),
    also check the dataset lists. Methods are declared first (complora.methods.registry): a variant takes its
    family's configured keys before the schema fills the defaults. Raises one error listing every problem."""
    if not isinstance(config, dict):
        raise ComploraError(f"{source}: expected a mapping of settings, got {type(config).__name__}")
    methods_schema = schema.get("properties", {}).get("methods", {})
    if "methods" not in config and "default" in methods_schema:
        config["methods"] = copy.deepcopy(methods_schema["default"])  # the entries to declare
    declare_methods(config)
    validator = _with_defaults(Draft202012Validator, schema)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda error: [str(part) for part in error.absolute_path])
    lines = [f"  - {_key(error.absolute_path)}: {_describe(error)}" for error in errors]
    if datasets is not None and not errors:
        lines += _dataset_problems(config, datasets)
    if "methods" in schema.get("properties", {}):
        lines += method_problems(config)
    if not errors and "backbone" in schema.get("properties", {}):
        lines += _matrix_problems(config)
    if lines:
        raise ComploraError(f"{source} is not a valid experiment config:\n" + "\n".join(lines))
    return config
