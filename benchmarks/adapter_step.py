"""Training-step cost of LoRA vs Comp-LoRA on ViT-B-16 (CPU), plus the projector build time.

Measures, alternating the variants within one process so that machine noise hits them alike:
- ``lora``: complora's adapter layer, method lora;
- ``complora``: the same layer, method complora with k=32 (projection formed per step, O(r d k));
- ``split-qkv``: a reference LoRA that splits the fused q/k/v projection into three nn.Linear layers,
  the way per-Linear LoRA libraries adapt attention.
A step is forward through both towers (8 images at 224^2, 10 prompts), CLIP logits, cross-entropy,
backward and an AdamW step. Prints a JSON report; see benchmarks/README.md for the last figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from complora.adapters import AdapterConfig, inject, trainable_parameters
from complora.adapters.sites import find_attention_sites
from complora.subspace import build_projector


class SplitQkvLoraAttention(nn.Module):
    """Reference: q, k, v as three nn.Linear layers, each with its own LoRA branch and dropout mask."""

    def __init__(self, attention: nn.MultiheadAttention, config: AdapterConfig) -> None:
        super().__init__()
        width = attention.embed_dim
        self.heads, self.scale = attention.num_heads, config.scale
        self.dropout = nn.Dropout(config.dropout)
        self.projections = nn.ModuleList()
        self.lora_A, self.lora_B = nn.ParameterList(), nn.ParameterList()
        for third in range(3):
            linear = nn.Linear(width, width).requires_grad_(False)
            with torch.no_grad():
                linear.weight.copy_(attention.in_proj_weight[third * width : (third + 1) * width])
                linear.bias.copy_(attention.in_proj_bias[third * width : (third + 1) * width])
            self.projections.append(linear)
            a = nn.Parameter(torch.empty(config.rank, width))
            nn.init.kaiming_uniform_(a, a=5**0.5)
            self.lora_A.append(a)
            self.lora_B.append(nn.Parameter(torch.zeros(width, config.rank)))
        self.out_proj = attention.out_proj

    def forward(self, query, key, value, need_weights=False, attn_mask=None, **_):
        batch, length, width = query.shape
        # Each LoRA-wrapped Linear draws its own dropout mask, as in CLIP-LoRA.
        q, k, v = (
            linear(query) + self.scale * F.linear(F.linear(self.dropout(query), a), b)
            for linear, a, b in zip(self.projections, self.lora_A, self.lora_B, strict=True)
        )
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(attn.transpose(1, 2).reshape(batch, length, width)), None


def random_vit_b16() -> nn.Module:
    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-16")


def make_model(variant: str, projector=None) -> nn.Module:
    model = random_vit_b16()
    if variant == "split-qkv":
        config = AdapterConfig()
        sites = find_attention_sites(model, config)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for site in sites:
            site.parent.attn = SplitQkvLoraAttention(site.module, config)
    else:
        inject(model, AdapterConfig(method=variant, k=32), projector)
    return model.train()


def make_step(model: nn.Module, images: torch.Tensor, texts: torch.Tensor, labels: torch.Tensor):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=1e-2)

    def step() -> float:
        start = time.perf_counter()
        image_features = F.normalize(model.encode_image(images), dim=-1)
        text_features = F.normalize(model.encode_text(texts), dim=-1)
        loss = F.cross_entropy(100 * image_features @ text_features.T, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8, help="measured steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps per variant")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    base = random_vit_b16()
    start = time.perf_counter()
    projector = build_projector(base, AdapterConfig(method="complora", k=32))
    projector_seconds = time.perf_counter() - start
    projector_peak = peak_rss_mib()
    del base

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 224, 224, generator=generator)
    texts = open_clip.tokenize([f"a photo of a class number {i}." for i in range(10)])
    labels = torch.randint(0, 10, (8,), generator=generator)
    variants = ["lora", "complora", "split-qkv"]
    models = {variant: make_model(variant, projector if variant == "complora" else None) for variant in variants}
    steps = {variant: make_step(model, images, texts, labels) for variant, model in models.items()}
    times: dict[str, list[float]] = {variant: [] for variant in variants}
    for round_index in range(args.warmup + args.rounds):
        order = variants if round_index % 2 == 0 else variants[::-1]
        for variant in order:
            seconds = steps[variant]()
            if round_index >= args.warmup:
                times[variant].append(seconds)
    median = {variant: statistics.median(values) for variant, values in times.items()}
    report = {
        "model": "ViT-B-16 (random init)",
        "threads": args.threads,
        "batch": "8 images 224x224 + 10 prompts, both towers",
        "rounds": args.rounds,
        "trainable_parameters": {variant: trainable_parameters(model) for variant, model in models.items()},
        "median_step_seconds": {variant: round(value, 4) for variant, value in median.items()},
        "all_step_seconds": {variant: [round(v, 4) for v in values] for variant, values in times.items()},
        "ratio_complora_over_lora": round(median["complora"] / median["lora"], 4),
        "ratio_lora_over_split_qkv": round(median["lora"] / median["split-qkv"], 4),
        "projector_build_seconds": round(projector_seconds, 2),
        "projector_peak_rss_mib": round(projector_peak, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
