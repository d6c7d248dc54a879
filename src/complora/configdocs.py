"""config/README.md, generated from the config schema (workflow/schemas/config.schema.yaml): every key with
its type, default and description, the method names, and how to declare a variant. A test regenerates it
and compares, so the page and the schema cannot drift apart.
"""

from __future__ import annotations

import json
from typing import Any

from .methods.families import FAMILIES, ZERO_SHOT

SCHEMA_PATH = "workflow/schemas/config.schema.yaml"

INTRO = f"""\
# Configuring a study

<!-- Generated from {SCHEMA_PATH} by `complora config-docs`; edit the schema, then regenerate. -->

A study is one YAML file. `config.yaml` (the default) is the offline demo; `config/paper.yaml` is the paper
grid (11 datasets x 1/2/4/8/16 shots x 3 seeds, ViT-B/16). Run another one with
`snakemake --cores all --configfile config/paper.yaml`, or layer a few keys over the default with
`--configfile config.yaml my_changes.yaml` (later files win, key by key).

The workflow checks the config against the schema before any job starts: a wrong key, type or value stops
it with one message naming every problem (`hyperparameters.lora.rank: 0 is too small; it must be >= 1`).
Keys left out take the defaults below.

Changing a key redoes the jobs whose request it changes: each job records what it was asked for (a run
in its `metrics.json`, an artifact in its seal), and whatever was made with other settings is redone, with
or without Snakemake's job records (`dvc pull`, `dvc exp run`; the README's "What decides that a job is
done"). How many GPUs a job asks for is a key (`gpus_per_training_job`); the other runtime settings
(cores, how many jobs share the GPUs, the cluster, checkpoints) are not, and live in the Snakemake profiles
(`profiles/`).
"""

METHODS_TEXT = """\
## Methods and variants

`methods` lists the methods to run, by name. A name is `zeroshot`, a family, or a variant declared under
`hyperparameters`:

{families}

An entry of `hyperparameters` named after a family configures that family. Any other name is a variant
(an ablation): it names its family and the keys it changes, and starts from the family's configured entry:

```yaml
methods: [zeroshot, lora, complora, complora_k8]
hyperparameters:
  complora: {{iterations_per_shot: 20}}
  complora_k8: {{family: complora, k: 8}}      # 20 iterations per shot, k = 8
  taskres_a1: {{family: taskres, alpha: 1.0}}  # declared, but runs only if listed in methods
```

`datasets` and `shots` inside an entry restrict where it runs (they are not inherited by its variants):
`complora_input: {{family: complora, side: input, datasets: [DTD], shots: [4, 16]}}`. Tables show a family's
own entry by its label and a variant by its name; the comparisons put every method beside
`comparisons.reference`.
"""


class _Resolver:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root

    def __call__(self, schema: dict[str, Any]) -> dict[str, Any]:
        if "$ref" not in schema:
            return schema
        node: Any = self.root
        for part in schema["$ref"][2:].split("/"):
            node = node[part]
        return {**node, **{key: value for key, value in schema.items() if key != "$ref"}}


def _describe_type(schema: dict[str, Any], resolve: _Resolver) -> str:
    if "enum" in schema:
        return "one of " + ", ".join("null" if value is None else f"`{value}`" for value in schema["enum"])
    kind = schema.get("type", "any")
    kinds = kind if isinstance(kind, list) else [kind]
    names = []
    for name in kinds:
        if name == "array":
            items = resolve(schema.get("items", {}))
            inner = _describe_type(items, resolve) if items else "values"
            names.append(f"list of {inner}")
        else:
            names.append(name)
    text = " or ".join(names)
    bounds = [
        f"{symbol} {schema[key]}"
        for key, symbol in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
        if key in schema
    ]
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def _default(schema: dict[str, Any]) -> str:
    if "default" not in schema:
        return "required" if schema.get("_required") else "-"
    value = schema["default"]
    if value == {}:
        return "-"
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _rows(properties: dict[str, Any], prefix: str, resolve: _Resolver) -> list[str]:
    rows = []
    for name, raw in properties.items():
        schema = resolve(raw)
        key = f"{prefix}{name}"
        nested = schema.get("properties")
        additional = schema.get("additionalProperties")
        if nested:
            rows.append(f"| `{key}` | mapping | - | {_cell(schema.get('description', ''))} |")
            rows += _rows(nested, f"{key}.", resolve)
        elif isinstance(additional, dict) and "properties" in additional:
            rows.append(f"| `{key}` | mapping of names | - | {_cell(schema.get('description', ''))} |")
            required = set(additional.get("required", []))
            entries = {n: {**resolve(s), "_required": n in required} for n, s in additional["properties"].items()}
            rows += _rows(entries, f"{key}.<name>.", resolve)
        elif key == "hyperparameters":
            rows.append(f"| `{key}` | mapping of method names | - | {_cell(schema['description'])} |")
        else:
            rows.append(
                f"| `{key}` | {_cell(_describe_type(schema, resolve))} | {_cell(_default(schema))} | "
                f"{_cell(schema.get('description', ''))} |"
            )
    return rows


def _family_sections(schema: dict[str, Any]) -> dict[str, str]:
    """Family name → the schema definition holding its keys (zs_lp's are clap's)."""
    sections = {}
    for branch in schema["$defs"]["method"].get("allOf", []):
        family = branch["if"]["properties"]["family"]
        names = family.get("enum", [family.get("const")])
        section = branch["then"]["$ref"].rsplit("/", 1)[1]
        sections.update(dict.fromkeys(names, section))
    return sections


TABLE_HEAD = ["| key | type | default | description |", "|---|---|---|---|"]


def config_reference(schema: dict[str, Any]) -> str:
    """The Markdown page documenting every key of ``schema`` (the loaded config schema)."""
    resolve = _Resolver(schema)
    lines = [INTRO, "## Keys", "", _cell(schema.get("description", "")), "", *TABLE_HEAD]
    lines += _rows(schema["properties"], "", resolve)
    families = [f"- `{ZERO_SHOT}`: zero-shot CLIP with `prompt_template` (and CoOp's prompts where defined)"]
    kinds = {"adapter": "adapters trained in the encoders", "feature": "a classifier on frozen features"}
    sections = _family_sections(schema)
    families += [
        f"- `{name}`: {family.label}, {kinds.get(family.kind, family.kind)} (keys: `{sections.get(name, name)}` below)"
        for name, family in FAMILIES.items()
        if name != ZERO_SHOT
    ]
    lines += ["", METHODS_TEXT.format(families="\n".join(families)), "## Hyperparameters of each family", ""]
    lines.append(
        "`null` means the official value for the dataset and shots (the README's method table). `datasets` and "
        "`shots` restrict where the entry runs."
    )
    for name, definition in schema["$defs"]["families"].items():
        lines += ["", f"### `{name}`", "", _cell(definition.get("description", "")), "", *TABLE_HEAD]
        properties = {key: value for key, value in definition["properties"].items() if key != "family"}
        lines += _rows(properties, "", resolve)
    return "\n".join(lines) + "\n"
