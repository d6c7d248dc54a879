"""The adapter families: LoRA (CLIP-LoRA parity) and Comp-LoRA, which differ only in the projection of the
update (complora.adapters). A method's settings become the adapter's configuration and the training's."""

from __future__ import annotations

from typing import Any

from ..adapters import AdapterConfig
from ..finetune import FinetuneSettings

ADAPTER_KEYS = ("rank", "alpha", "scaling", "dropout", "targets", "towers", "k", "side")
TRAINING_KEYS = ("batch_size", "learning_rate", "weight_decay", "min_learning_rate", "logit_scale")


def adapter_config(family: str, settings: dict[str, Any]) -> AdapterConfig:
    return AdapterConfig(method=family, **{key: settings[key] for key in ADAPTER_KEYS if key in settings})


def finetune_settings(settings: dict[str, Any], iterations: int, template: str) -> FinetuneSettings:
    return FinetuneSettings(
        iterations=iterations, template=template, **{key: settings[key] for key in TRAINING_KEYS if key in settings}
    )
