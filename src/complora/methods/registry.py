"""Methods by name: each a family and its hyperparameters, from the study config (torch-free), and the
registry from family name to the module that implements it (imported only when a job needs it).

A config entry named after a family configures that family; any other name is a variant that starts from
its family's configured entry and changes some keys (``complora_k8: {family: complora, k: 8}``). The schema
(workflow/schemas/config.schema.yaml) knows every family's keys and defaults.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .families import ADAPTER, FAMILIES, FEATURE, ZERO_SHOT, Family

GRID_KEYS = ("datasets", "shots")


@dataclass(frozen=True)
class Method:
    """A named method of the study: its family, hyperparameters, and where in the grid it runs."""

    name: str
    family: str
    settings: dict[str, Any]
    datasets: tuple[str, ...] | None = None
    shots: tuple[int, ...] | None = None

    @property
    def spec(self) -> Family:
        return FAMILIES[self.family]

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def label(self) -> str:
        return method_label(self.name, self.family)


def method_label(name: str, family: str | None) -> str:
    """A family's own entry is shown by the family's label (LoRA, Tip-Adapter-F), a variant by its name."""
    return FAMILIES[family].label if family in FAMILIES and name == family else name


def declare_methods(config: dict[str, Any]) -> None:
    """Before the schema check: give every family listed in ``methods`` an entry, every entry named after a
    family that family, and every variant its family's configured keys under its own."""
    hyperparameters = config.get("hyperparameters", {})
    methods = config.get("methods", [])
    if not isinstance(hyperparameters, dict) or not isinstance(methods, list):
        return  # the schema check names the problem
    config["hyperparameters"] = hyperparameters
    for name in methods:
        if isinstance(name, str) and name in FAMILIES and name != ZERO_SHOT and name not in hyperparameters:
            hyperparameters[name] = {}
    for name, entry in hyperparameters.items():
        if isinstance(entry, dict) and "family" not in entry and name in FAMILIES:
            entry["family"] = name
    for name, entry in list(hyperparameters.items()):
        if not isinstance(entry, dict):
            continue
        base = hyperparameters.get(entry.get("family"))
        if name != entry.get("family") and isinstance(base, dict):
            inherited = {key: copy.deepcopy(value) for key, value in base.items() if key not in GRID_KEYS}
            hyperparameters[name] = {**inherited, **entry}


def method_problems(config: dict[str, Any]) -> list[str]:
    """After the schema check: names in ``methods`` that are declared nowhere, a comparisons reference that
    names no method, and grid restrictions that leave the study's datasets or shots."""
    declared, methods = config.get("hyperparameters"), config.get("methods")
    if not isinstance(declared, dict) or not isinstance(methods, list):
        return []  # the schema check names the problem
    families = ", ".join(FAMILIES)
    problems = [
        f"  - methods[{index}]: {name!r} is neither a method family ({families}) nor declared under "
        f"hyperparameters; declare it as hyperparameters.{name}: {{family: <one of those>, ...}}"
        for index, name in enumerate(methods)
        if isinstance(name, str) and name != ZERO_SHOT and name not in declared
    ]
    reference = (config.get("comparisons") or {}).get("reference")
    if reference == ZERO_SHOT:
        problems.append("  - comparisons.reference: zero-shot has no seeds to pair with; choose a trained method")
    elif isinstance(reference, str) and reference not in declared and reference not in FAMILIES:
        problems.append(
            f"  - comparisons.reference: {reference!r} is neither a method family ({families}) nor declared under "
            "hyperparameters"
        )
    for name, entry in declared.items():
        if name in FAMILIES and isinstance(entry, dict) and entry.get("family", name) != name:
            problems.append(
                f"  - hyperparameters.{name}.family: {entry['family']!r}; an entry named after a family is that "
                f"family's configuration; give a variant of {entry['family']} its own name"
            )
        if name not in methods:
            continue  # a method the study does not run: its grid restrictions do not apply
        for key in GRID_KEYS:
            study = config.get(key)
            if not isinstance(entry, dict) or not isinstance(entry.get(key), list) or not isinstance(study, list):
                continue
            if not [value for value in entry[key] if value in study]:
                problems.append(
                    f"  - hyperparameters.{name}.{key}: {entry[key]} leaves {name} nothing to run among the study's "
                    f"{key} {study}; list some of those under hyperparameters.{name}.{key}, remove the key to run "
                    f"all of them, or take {name} out of methods"
                )
    return problems


def study_methods(config: dict[str, Any]) -> dict[str, Method]:
    """The methods listed in a checked config, by name, in the listed order (zero-shot left out: it is
    the reference every other method is measured against, one job per dataset)."""
    methods = {}
    for name in config["methods"]:
        if name == ZERO_SHOT:
            continue
        entry = dict(config["hyperparameters"][name])
        family = entry.pop("family")
        # A restriction runs the method on the values the study has (a merged config may restrict a method
        # to values another study leaves out, e.g. the demo's prompt learners at 16 shots).
        grid = {
            key: tuple(value for value in entry.pop(key) if value in config[key]) if key in entry else None
            for key in GRID_KEYS
        }
        methods[name] = Method(name, family, entry, **grid)
    return methods


def methods_of_kind(methods: dict[str, Method], kind: str) -> list[Method]:
    return [method for method in methods.values() if method.kind == kind]


def implementation(family: str) -> ModuleType:
    """The module implementing ``family`` (one module may serve several: lora and complora, zs_lp and clap)."""
    if FAMILIES.get(family) is None or FAMILIES[family].module is None:
        raise KeyError(f"no implementation module for method family {family!r}; known: {', '.join(FAMILIES)}")
    return importlib.import_module(f"{__package__}.{FAMILIES[family].module}")


def family_settings(family: str, settings: dict[str, Any]) -> dict[str, Any]:
    """A family's settings: its official defaults with ``settings`` over them; unknown keys are refused by
    name, and so is a value of another kind than the default's (null where the family's ``NULLABLE`` allows).
    """
    module = implementation(family)
    defaults, nullable = module.DEFAULTS[family], getattr(module, "NULLABLE", frozenset())
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {family} setting(s) {unknown}; known: {', '.join(sorted(defaults))}")
    for key, value in settings.items():
        if not (value is None and key in nullable) and not _same_kind(value, defaults[key]):
            raise ValueError(f"{family} setting {key}: {value!r} is not of the kind of its default {defaults[key]!r}")
    return {**copy.deepcopy(defaults), **settings}


def _same_kind(value: Any, default: Any) -> bool:
    """Whether ``value`` can stand where ``default`` does (a null default: the official value per dataset,
    a number, a list or a name)."""
    if default is None:
        return value is None or (isinstance(value, int | float | str | list) and not isinstance(value, bool))
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int | float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, type(default))


__all__ = [
    "ADAPTER",
    "FEATURE",
    "ZERO_SHOT",
    "Method",
    "declare_methods",
    "family_settings",
    "implementation",
    "study_methods",
]
