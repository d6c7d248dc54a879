"""complora: Comp-LoRA and LoRA few-shot adaptation of CLIP, from raw data to the paper's tables."""

__version__ = "0.1.0"
