"""The method families complora runs, described without importing torch (the workflow reads this at parse
time): what kind of job each one is, the module implementing it, its label in tables, and the augmented views
of the k-shot images it reads from the feature store.

- ``zeroshot``: the pretrained model with a text classifier (the ``zero_shot`` rule, one job per dataset);
- ``adapter``: trains adapters in both towers (the ``train`` rule, one job per dataset x shots x seed);
- ``feature``: fits a classifier on frozen-tower features from the feature store (the ``fit`` rule, one job per
  dataset covering every shot and seed: a process start costs more than most fits);
- ``prompt``: learns context vectors in front of the class names, both towers frozen (the ``prompt`` rule, one
  job per dataset x shots x seed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

ZERO_SHOT, ADAPTER, FEATURE, PROMPT = "zeroshot", "adapter", "feature", "prompt"
# The retention of a method whose towers stay the pretrained ones (every feature-level family): their
# zero-shot accuracy elsewhere is the pretrained model's by construction, so there is nothing to re-measure.
ENCODERS_UNCHANGED = "encoders unchanged"
# Augmented views of the k-shot images that feature-level families read (docs/baselines.md):
# Tip-Adapter's RandomResizedCrop(0.5-1) + flip and Dassl's RandomResizedCrop(0.08-1) + flip.
AUGMENTATIONS = {"tip": (0.5, 1.0), "dassl": (0.08, 1.0)}


@dataclass(frozen=True)
class Family:
    name: str
    kind: str
    module: str | None  # under complora.methods; zero-shot is the reference `complora evaluate` measures
    label: str
    # Per augmentation, the settings keys whose sum is the number of views the family reads.
    views: dict[str, tuple[str, ...]] = field(default_factory=dict)
    needs_projector: bool = False


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("zeroshot", ZERO_SHOT, None, "Zero-shot CLIP"),
        Family("lora", ADAPTER, "lora", "LoRA"),
        Family("complora", ADAPTER, "lora", "Comp-LoRA", needs_projector=True),
        Family("linear_probe", FEATURE, "linear_probe", "Linear probe"),
        Family("tip_adapter", FEATURE, "tip_adapter", "Tip-Adapter", {"tip": ("augment_views",)}),
        Family("tip_adapter_f", FEATURE, "tip_adapter", "Tip-Adapter-F", {"tip": ("augment_views", "train_views")}),
        Family("clip_adapter", FEATURE, "clip_adapter", "CLIP-Adapter", {"dassl": ("views",)}),
        Family("taskres", FEATURE, "taskres", "TaskRes", {"dassl": ("views",)}),
        Family("lp_pp", FEATURE, "lp_pp", "LP++", {"tip": ("views",)}),
        Family("zs_lp", FEATURE, "clap", "ZS-LP", {"dassl": ("views",)}),
        Family("clap", FEATURE, "clap", "CLAP", {"dassl": ("views",)}),
        Family("coop4", PROMPT, "prompt_learning", "CoOp (4)"),
        Family("coop16", PROMPT, "prompt_learning", "CoOp (16)"),
        Family("kgcoop", PROMPT, "prompt_learning", "KgCoOp"),
        Family("cocoop", PROMPT, "prompt_learning", "CoCoOp"),
    )
}
# The method names of CLIP-LoRA's Table 3 (workflow/resources/cliplora_table3_vitb16.csv) for the families it lists.
PUBLISHED_NAMES = {
    "CLIP": "zeroshot",
    "CLIP-LoRA": "lora",
    "TIP-Adapter-F": "tip_adapter_f",
    "CLIP-Adapter": "clip_adapter",
    "TaskRes": "taskres",
    "CoOp (4)": "coop4",
    "CoOp (16)": "coop16",
    "KgCoOp": "kgcoop",
    "CoCoOp": "cocoop",
}


# The views per image a feature store keeps at least, for every augmentation some method reads: the official
# counts (Tip-Adapter's 10 cache views + Tip-Adapter-F's 20 epochs; CLAP's 20), so that a variant reading no
# more than these leaves the store, and every other method's fit, alone.
STORE_VIEWS = {"tip": 30, "dassl": 20}


def views_needed(family: str, settings: dict) -> dict[str, int]:
    """Augmented views per augmentation that a method of ``family`` with ``settings`` reads (Tip-Adapter-F:
    its cache views, then as many other views for its epochs)."""
    return {aug: sum(int(settings[key]) for key in keys) for aug, keys in FAMILIES[family].views.items()}


def store_views(needs: list[dict[str, int]]) -> dict[str, int]:
    """The views per image a store keeps for methods needing ``needs``: at least STORE_VIEWS of each
    augmentation any of them reads, more where one reads more."""
    return {
        aug: max(STORE_VIEWS[aug], *(need.get(aug, 0) for need in needs))
        for aug in AUGMENTATIONS
        if any(need.get(aug, 0) for need in needs)
    }
