"""Training-step cost of complora's LoRA and Comp-LoRA beside a CLIP-LoRA-style reference, on ViT-B-16.

Measured side by side in one process, the variants alternating (the order flips every round) so that
machine noise hits them alike:
- ``lora``: complora's adapter layer (fused q/k/v, method lora), the prompts on their exact short context
  (complora.text) with the causal mask handed to SDPA as ``is_causal``;
- ``complora``: the same with method complora, k=32 on both sides (the projection formed every step);
- ``lora+compile`` / ``complora+compile``: the same through ``torch.compile`` (the ``--compile`` flag of
  ``complora train``), its compile time reported apart;
- ``cliplora``: the reference, written from CLIP-LoRA's description (its paper and released layers): q, k and v split
  into three ``nn.Linear`` layers, each with its own LoRA branch and dropout mask, and open_clip's plain
  ``encode_text`` at the full 77-token context with its float mask.
A step is the training step of complora.finetune: both towers (bf16 autocast on CUDA), cosine logits at
scale 100, cross-entropy, backward, AdamW (fused on CUDA). Settings: ``imagenet`` is 16-shot ImageNet's
step (32 images at 224^2, ``--prompts`` class prompts "a photo of a {name}." of ImageNet's lengths: 8 to
18 tokens, mean ~9); ``small`` the earlier 8 images + 10 prompts; ``demo`` the demo's 16-shot step
(``demo-vit-tiny``, 32 images at 32^2, 6 prompts). Prints one JSON report (``--json-line``:
on one line); benchmarks/README.md has the last figures.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from complora.adapters import AdapterConfig, inject, trainable_parameters
from complora.adapters.sites import find_attention_sites
from complora.evaluation import tower_autocast
from complora.models import load_clip
from complora.runinfo import peak_rss_mib
from complora.subspace import build_projector
from complora.text import prompt_encoder

VARIANTS = ("lora", "complora", "cliplora", "lora+compile", "complora+compile")
# Words of one BPE token each, so that a name of n words is n tokens.
WORDS = [
    "red",
    "dog",
    "cat",
    "tree",
    "car",
    "house",
    "bird",
    "fish",
    "blue",
    "green",
    "small",
    "large",
    "old",
    "white",
    "black",
    "city",
    "river",
]
# Name lengths in tokens of ImageNet's CoOp class names, roughly: most one to three, a tail to eleven.
NAME_TOKENS = (1, 2, 3, 4, 5, 6, 8, 11)
NAME_SHARES = (0.42, 0.3, 0.14, 0.07, 0.03, 0.02, 0.015, 0.005)


class SplitQkvLoraAttention(nn.Module):
    """CLIP-LoRA's adapted attention: q, k, v as three nn.Linear layers, each with its own LoRA branch and
    dropout mask, and the mask as open_clip passes it (a float mask, so SDPA cannot use its causal kernels)."""

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
        q, k, v = (
            linear(query) + self.scale * F.linear(F.linear(self.dropout(query), a), b)
            for linear, a, b in zip(self.projections, self.lora_A, self.lora_B, strict=True)
        )
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        mask = None if attn_mask is None else attn_mask.to(q.dtype)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(attn.transpose(1, 2).reshape(batch, length, width)), None


def prompts(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    lengths = rng.choice(NAME_TOKENS, size=count, p=NAME_SHARES)
    return [f"a photo of a {' '.join(rng.choice(WORDS, size=n))}." for n in lengths]


def random_model(device: torch.device, architecture: str = "ViT-B-16") -> nn.Module:
    torch.manual_seed(0)
    return load_clip(architecture, "none", seed=0).to(device)


def make_model(variant: str, device: torch.device, projector=None, architecture: str = "ViT-B-16") -> nn.Module:
    model = random_model(device, architecture)
    method = variant.removesuffix("+compile")
    if method == "cliplora":
        config = AdapterConfig()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for site in find_attention_sites(model, config):
            site.parent.attn = SplitQkvLoraAttention(site.module, config).to(device)
    else:
        inject(model, AdapterConfig(method=method, k=32), projector)
    return model.train()


def make_step(model: nn.Module, variant: str, images: torch.Tensor, tokens: torch.Tensor, labels: torch.Tensor):
    device = images.device
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=1e-2, fused=device.type == "cuda"
    )
    autocast = tower_autocast(device)
    if variant.startswith("cliplora"):
        encode_prompts = functools.partial(model.encode_text, tokens)
    else:
        encode_prompts = prompt_encoder(model, tokens)

    def loss_of_step() -> torch.Tensor:
        with autocast:
            image_features = model.encode_image(images)
            text_features = encode_prompts()
        logits = 100 * F.normalize(image_features.float(), dim=-1) @ F.normalize(text_features.float(), dim=-1).T
        return F.cross_entropy(logits, labels)

    compiled = variant.endswith("+compile")
    forward = torch.compile(loss_of_step, options={"fallback_random": True}) if compiled else loss_of_step

    def step() -> None:
        loss = forward()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Seconds per step over ``repeats`` consecutive steps (on CUDA: between two synchronisations)."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=("imagenet", "small", "demo"), default="imagenet")
    parser.add_argument("--prompts", type=int, default=100, help="class prompts (imagenet setting; 1000 on a GPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6, help="measured rounds per variant")
    parser.add_argument("--steps-per-round", type=int, default=1, help="consecutive steps timed as one round")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds per variant")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["lora", "complora", "cliplora"])
    parser.add_argument("--json-line", action="store_true", help="print the report on one line")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    architecture = "demo-vit-tiny" if args.setting == "demo" else "ViT-B-16"
    base = random_model(device, architecture)
    start = time.perf_counter()
    projector = build_projector(base, AdapterConfig(method="complora", k=32))
    projector_seconds = time.perf_counter() - start
    del base

    generator = torch.Generator().manual_seed(0)
    count, classes = {"imagenet": (32, args.prompts), "small": (8, 10), "demo": (32, 6)}[args.setting]
    texts = prompts(classes) if args.setting != "small" else [f"a photo of a class number {i}." for i in range(10)]
    size = 32 if args.setting == "demo" else 224
    tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=32 if args.setting == "demo" else 77)
    tokens = tokenizer(texts).to(device)
    images = torch.randn(count, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, classes, (count,), generator=generator).to(device)
    models = {v: make_model(v, device, projector if "complora" in v else None, architecture) for v in args.variants}
    steps = {v: make_step(model, v, images, tokens, labels) for v, model in models.items()}
    first_step = {}
    for variant, step in steps.items():  # the first step of a compiled variant is its compilation
        first_step[variant] = timed(step, device, 1)
    times: dict[str, list[float]] = {v: [] for v in args.variants}
    for round_index in range(args.warmup + args.rounds):
        order = args.variants if round_index % 2 == 0 else args.variants[::-1]
        for variant in order:
            seconds = timed(steps[variant], device, args.steps_per_round)
            if round_index >= args.warmup:
                times[variant].append(seconds)
    median = {v: statistics.median(values) for v, values in times.items()}
    lengths = (tokens.argmax(dim=-1) + 1).float()
    report = {
        "model": f"{architecture} (random init)",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "threads": args.threads,
        "setting": args.setting,
        "images": count,
        "prompts": classes,
        "prompt_tokens": {"mean": round(lengths.mean().item(), 2), "max": int(lengths.max()), "of": tokens.shape[1]},
        "rounds": args.rounds,
        "steps_per_round": args.steps_per_round,
        "trainable_parameters": {v: trainable_parameters(model) for v, model in models.items()},
        "median_step_seconds": {v: round(value, 4) for v, value in median.items()},
        "all_step_seconds": {v: [round(s, 4) for s in values] for v, values in times.items()},
        "first_step_seconds": {v: round(value, 2) for v, value in first_step.items()},
        "projector_build_seconds": round(projector_seconds, 2),
        "peak_rss_mib": peak_rss_mib(),
        "torch": torch.__version__,
    }
    if "lora" in median and "complora" in median:
        report["ratio_complora_over_lora"] = round(median["complora"] / median["lora"], 4)
    if "lora" in median and "cliplora" in median:
        report["ratio_lora_over_cliplora"] = round(median["lora"] / median["cliplora"], 4)
    for variant in args.variants:
        if variant.endswith("+compile") and variant.removesuffix("+compile") in median:
            report[f"ratio_{variant.replace('+', '_')}_over_eager"] = round(
                median[variant] / median[variant.removesuffix("+compile")], 4
            )
    if device.type == "cuda":
        report["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    print(json.dumps(report, indent=None if args.json_line else 2))


if __name__ == "__main__":
    main()
