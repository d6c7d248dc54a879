"""Evaluation at the paper's scale: decode and preprocessing throughput, the evaluation cache, bounded memory.

Builds an ImageNet-shaped dataset procedurally (CoOp layout: ``images/val/<wnid>/*.JPEG``, ``classnames.txt``,
a split file; JPEGs of ImageNet's common sizes and aspect ratios), then measures with complora's own code:

- decode + open_clip preprocessing (ViT-B-16's ``preprocess_val``: shorter side 224, bicubic, centre crop)
  in images/s with 1 and 2 threads;
- the evaluation cache: build time, size on disk;
- one evaluation (a child process each, so its peak RSS is its own) at 5,000 and 50,000 test images from the
  cache, and at 5,000 from the JPEGs. The towers are a 224-pixel open_clip ViT small enough that the data path
  is what is measured; ViT-B-16's own forward throughput on this CPU is measured apart;
- extrapolated from these: one paper-grid training job's evaluation (its own test split plus 10 retention
  splits: all 11 test splits, 133,696 images) with and without the cache.

Prints a JSON report; see benchmarks/README.md for the last figures. Needs ~11 GB of disk in --work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from complora.data.evalcache import build_eval_cache, decode_all
from complora.data.images import EvalTransform
from complora.data.splits import read_split
from complora.data.testset import DatasetRef, open_test_split
from complora.data.training import TrainingImages
from complora.evaluation import zero_shot_accuracies
from complora.models import load_clip
from complora.runinfo import package_versions, peak_rss_mib

# ImageNet's most common sizes (width, height); 500x375 and 375x500 are the bulk of it.
SIZES = [(500, 375), (375, 500), (500, 333), (333, 500), (500, 500), (640, 480), (400, 300), (500, 400)]
# Test split sizes of the 11 benchmarks (docs/datasets.md).
TEST_SPLITS = {"ImageNet": 50000, "Caltech101": 2465, "OxfordPets": 3669, "StanfordCars": 8041, "Flowers102": 2463,
               "Food101": 30300, "FGVCAircraft": 3333, "SUN397": 19850, "DTD": 1692, "EuroSAT": 8100,
               "UCF101": 3783}  # fmt: skip
# A ViT at 224 pixels whose towers cost next to nothing: the evaluation's data path is what is timed.
PROBE_MODEL = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


def _photo(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) / 100
    phase = rng.uniform(0, 6, 3)
    base = np.stack([np.sin(x * 1.3 + phase[0]), np.cos(y * 0.9 + phase[1]), np.sin((x + y) * 0.7 + phase[2])], -1)
    pixels = base * 90 + 128 + rng.normal(0, 10, (height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_dataset(root: Path, classes: int, per_class: int, unique: int) -> dict[int, Path]:
    """``classes`` x ``per_class`` test JPEGs (``unique`` distinct files, the rest hard links to them) and two
    split files: 5 images per class (5,000 for ImageNet's 1,000 classes) and all of them."""
    rng = np.random.default_rng(0)
    originals = []
    source = root / "originals"
    source.mkdir(parents=True)
    for index in range(unique):
        path = source / f"{index}.JPEG"
        _photo(*SIZES[index % len(SIZES)], rng).save(path, quality=90)
        originals.append(path)
    entries, wnids = [], [f"n{label:08d}" for label in range(classes)]
    for label, wnid in enumerate(wnids):
        (root / "images" / "val" / wnid).mkdir(parents=True)
        for item in range(per_class):
            relpath = f"val/{wnid}/ILSVRC2012_val_{label * per_class + item:08d}.JPEG"
            os.link(originals[(label * per_class + item) % unique], root / "images" / relpath)
            entries.append([relpath, label, f"class {label}"])
    (root / "classnames.txt").write_text("".join(f"{wnid} class {label}\n" for label, wnid in enumerate(wnids)))
    splits = {}
    for count in (5 * classes, len(entries)):
        chosen = [entry for index, entry in enumerate(entries) if index % per_class < count // classes]
        splits[count] = root / f"split_{count}.json"
        splits[count].write_text(json.dumps({"train": chosen[:classes], "val": [], "test": chosen}))
    return splits


def decode_rate(root: Path, split: Path, transform: EvalTransform, threads: int, count: int) -> float:
    entries = read_split(split)["test"][:count]
    start = time.perf_counter()
    for _ in decode_all(root, entries, transform, threads):
        pass
    return count / (time.perf_counter() - start)


def crop_costs(root: Path, split: Path, threads: int, count: int = 512, batch: int = 32) -> dict:
    """Milliseconds per training batch of crops, from originals held in memory and decoded per batch."""
    entries = [tuple(entry) for entry in read_split(split)["test"][:count]]
    figures = {}
    for label, limit in (("in_memory", float("inf")), ("decoded_per_batch", 0.0)):
        for workers in sorted({1, threads}):
            start = time.perf_counter()
            images = TrainingImages(root, entries, (224, 224), memory_limit_mib=limit, threads=workers)
            setup = time.perf_counter() - start
            generator = torch.Generator().manual_seed(0)
            order = torch.randperm(len(images), generator=generator)
            start = time.perf_counter()
            for first in range(0, len(images) - batch + 1, batch):
                images.crops(order[first : first + batch], (0.08, 1.0), generator)
            batches = len(images) // batch
            figures[f"{label}_{workers}_threads"] = {
                "ms_per_batch_of_32": round(1000 * (time.perf_counter() - start) / batches, 1),
                "setup_seconds": round(setup, 2),
            }
    figures["decoded_mib_per_image"] = round(images.decoded_mib / len(images), 3)
    figures["imagenet_16_shot_decoded_gib"] = round(16000 * images.decoded_mib / len(images) / 1024, 1)
    return figures


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    raise KeyError(field)


def evaluate_child(args: argparse.Namespace) -> None:
    """One evaluation in this process; prints its figures as JSON. The peak RSS of the evaluation itself is
    measured from a reset high-water mark (Linux: /proc/self/clear_refs), after model loading and imports."""
    import open_clip

    torch.set_num_threads(args.threads)
    model = load_clip(str(args.model_config), "none").eval()
    transform = EvalTransform.for_model(model)
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    dataset = DatasetRef("imagenet-shaped", args.root, args.split, args.cache)
    before = _status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    test = open_test_split(dataset, transform, threads=args.threads)
    (top1,) = zero_shot_accuracies(model, tokenizer, test, ["a photo of a {}."], transform, args.batch_size)
    seconds = time.perf_counter() - start
    print(json.dumps({"images": len(test.labels), "seconds": round(seconds, 2),
                      "images_per_second": round(len(test.labels) / seconds, 1), "rss_before_mib": before,
                      "peak_rss_mib": _status_mib("VmHWM"), "process_peak_rss_mib": peak_rss_mib(),
                      "accuracy": top1.accuracy}))  # fmt: skip


def run_child(root: Path, split: Path, cache: Path | None, model_config: Path, threads: int) -> dict:
    command = [sys.executable, __file__, "--child", "--root", str(root), "--split", str(split),
               "--model-config", str(model_config), "--threads", str(threads)]  # fmt: skip
    if cache:
        command += ["--cache", str(cache)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"evaluation child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def vit_b16_rate(threads: int, images: int = 16) -> float:
    torch.set_num_threads(threads)
    model = load_clip("ViT-B-16", "none").eval()
    batch = torch.randn(images, 3, 224, 224)
    with torch.no_grad():
        model.encode_image(batch[:2])
        start = time.perf_counter()
        model.encode_image(batch)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--unique", type=int, default=5000, help="distinct JPEG files (the rest are hard links)")
    parser.add_argument("--decode-sample", type=int, default=1000, help="images timed per decode measurement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, help="folder for the dataset and caches (default: a temp folder)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--split", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model-config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    if args.child:
        evaluate_child(args)
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="complora-eval-scale-"))
    try:
        start = time.perf_counter()
        splits = make_dataset(work / "imagenet", args.classes, args.per_class, args.unique)
        generate_seconds = time.perf_counter() - start
        root = work / "imagenet" / "images"
        small, largest = min(splits), max(splits)
        model_config = work / "probe-vit-224.json"
        model_config.write_text(json.dumps(PROBE_MODEL))
        transform = EvalTransform.for_model(load_clip("ViT-B-16", "none"))
        jpeg_bytes = np.mean([p.stat().st_size for p in (work / "imagenet" / "originals").iterdir()])
        sample = min(args.decode_sample, small)
        rates = {threads: decode_rate(root, splits[small], transform, threads, sample) for threads in (1, 2)}

        caches = {}
        for count, split in splits.items():
            start = time.perf_counter()
            entries = read_split(split)["test"]
            manifest = build_eval_cache("imagenet-shaped", root, split, entries, transform, work / f"cache_{count}",
                                        threads=args.threads)  # fmt: skip
            caches[count] = {"build_seconds": round(time.perf_counter() - start, 1),
                             "bytes": manifest["bytes"], "path": work / f"cache_{count}"}  # fmt: skip

        evaluations = {
            f"cache_{count}": run_child(root, split, caches[count]["path"], model_config, args.threads)
            for count, split in splits.items()
        }
        evaluations[f"jpeg_{small}"] = run_child(root, splits[small], None, model_config, args.threads)
        rss_growth = evaluations[f"cache_{largest}"]["peak_rss_mib"] - evaluations[f"cache_{small}"]["peak_rss_mib"]
        forward = vit_b16_rate(args.threads)
        crops = crop_costs(root, splits[small], args.threads, min(512, small))

        job_images = sum(TEST_SPLITS.values())
        from_cache = evaluations[f"cache_{largest}"]["images_per_second"]
        from_jpeg = evaluations[f"jpeg_{small}"]["images_per_second"]
        report = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "threads": args.threads,
            "versions": package_versions(),
            "dataset": {"test_images": largest, "classes": args.classes, "unique_jpegs": args.unique,
                        "mean_jpeg_kib": round(jpeg_bytes / 1024, 1), "generate_seconds": round(generate_seconds)},
            "decode_preprocess_images_per_second": {str(k): round(v, 1) for k, v in rates.items()},
            "cache": {str(count): {"build_seconds": c["build_seconds"], "gib_on_disk": round(c["bytes"] / 2**30, 2)}
                      for count, c in caches.items()},
            "evaluation": evaluations,
            "peak_rss_growth_mib_small_to_largest": round(rss_growth, 1),
            "vit_b16_forward_images_per_second_cpu": round(forward, 2),
            "training_crops": crops,
            "paper_job": {
                "test_images": job_images,
                "data_path_seconds_from_cache": round(job_images / from_cache),
                "data_path_seconds_from_jpegs": round(job_images / from_jpeg),
                "vit_b16_forward_seconds_cpu": round(job_images / forward),
                "cache_disk_gib_all_11_splits": round(job_images * 224 * 224 * 3 / 2**30, 1),
            },
        }  # fmt: skip
        print(json.dumps(report, indent=1))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
