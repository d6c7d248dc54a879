"""What preemption safety costs: the size of a training checkpoint and the time to write and read it, next to
one training step, for CLIP-LoRA's setting on ViT-B-16 (random weights, CPU).

One real `finetune` step with checkpointing writes the checkpoint (adapter weights, AdamW state, schedule,
random generators, batch order); it is then read and written again `--rounds` times. Prints a JSON report;
see benchmarks/README.md for the last figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

from complora.adapters import AdapterConfig, inject, trainable_parameters
from complora.checkpoint import Checkpointing
from complora.data.images import EvalTransform
from complora.data.training import TrainingImages
from complora.finetune import FinetuneSettings, finetune
from complora.models import load_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--method", default="lora", choices=["lora", "complora"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_clip(args.model, "none", seed=0)
    torch.manual_seed(0)
    inject(model, AdapterConfig(method=args.method))
    transform = EvalTransform.for_model(model)
    names = ["cat", "dog", "car", "tree"]
    settings = FinetuneSettings(iterations=1, batch_size=8)
    with tempfile.TemporaryDirectory() as folder:
        generator = np.random.default_rng(0)
        for index in range(8):
            Image.fromarray(generator.integers(0, 256, (*transform.size, 3), dtype=np.uint8)).save(
                f"{folder}/{index}.png"
            )
        entries = [(f"{index}.png", index % 4, names[index % 4]) for index in range(8)]
        images = TrainingImages(folder, entries, transform.size)
        checkpointing = Checkpointing(Path(folder) / "checkpoint.pt", every=1, identity="benchmark")
        tokenizer = open_clip.get_tokenizer(args.model)
        figures = finetune(
            model, tokenizer, images, names, settings, seed=0, transform=transform, checkpointing=checkpointing
        )
        size_bytes = checkpointing.path.stat().st_size
        saves, loads = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            state = checkpointing.load()
            loads.append(time.perf_counter() - start)
            assert state is not None
            start = time.perf_counter()
            checkpointing.save({k: v for k, v in state.items() if k not in ("format_version", "identity")})
            saves.append(time.perf_counter() - start)
    report = {
        "model": args.model,
        "method": args.method,
        "threads": args.threads,
        "machine": platform.machine(),
        "torch": torch.__version__,
        "trainable_parameters": trainable_parameters(model),
        "checkpoint_bytes": size_bytes,
        "save_seconds_median": round(statistics.median(saves), 4),
        "load_seconds_median": round(statistics.median(loads), 4),
        "first_step_seconds": round(figures["train_seconds"], 2),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
