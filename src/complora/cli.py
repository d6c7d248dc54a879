"""The ``complora`` command: one verb per pipeline step. Rules of the workflow call these verbs."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from . import __version__
from .adapters.config import TARGETS, TOWERS, AdapterConfig, parse_k
from .demo.datasets import DemoSizes, write_demo_world
from .demo.pretrain import PretrainSettings, pretrain
from .demo.tasks import TASKS
from .errors import ComploraError
from .models import load_clip
from .runinfo import peak_gpu_memory_mib, peak_rss_mib
from .subspace import build_projector, save_projector


def _add_projector_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="open_clip architecture name, or an open_clip JSON config file")
    parser.add_argument("--pretrained", required=True, help="open_clip pretrained tag, checkpoint path, or 'none'")
    parser.add_argument("--k-max", type=int, required=True, help="directions stored per matrix (largest k to be used)")
    parser.add_argument("--out", type=Path, required=True, help="output file, ending in .safetensors")
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(AdapterConfig.targets))
    parser.add_argument("--towers", nargs="+", choices=TOWERS, default=list(AdapterConfig.towers))
    parser.add_argument("--layers", nargs="+", default=["all"], help="'all' or block indices")
    parser.add_argument(
        "--k",
        dest="report_ks",
        action="append",
        help="a k to report energy and spectral gap for in the stats sidecar (repeatable; int, fraction or "
        "energy:<x>); default: powers of two up to k-max",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation when --pretrained none")
    parser.add_argument("--device", default="cpu", help="torch device for the SVDs (cpu, cuda, cuda:1, ...)")


def _check_device(device: str) -> None:
    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise ComploraError(f"--device {device}: not a torch device ({error}); use cpu, cuda or cuda:N") from error
    if kind == "cuda" and not torch.cuda.is_available():
        raise ComploraError(f"--device {device}: no CUDA GPU is visible here; use --device cpu")


def _run_projector(args: argparse.Namespace) -> None:
    if args.out.suffix != ".safetensors":
        raise ComploraError(f"--out {args.out}: the projector file must end in .safetensors")
    if args.k_max < 0:
        raise ComploraError(f"--k-max {args.k_max}: must be 0 or more")
    _check_device(args.device)
    layers = "all" if args.layers == ["all"] else args.layers
    config = AdapterConfig(method="complora", targets=args.targets, towers=args.towers, layers=layers, k=args.k_max)
    report_ks = [parse_k(k) for k in args.report_ks] if args.report_ks else None
    model = load_clip(args.model, args.pretrained, device=args.device, seed=args.seed)
    start = time.perf_counter()
    projector = build_projector(model, config, args.k_max)
    seconds = time.perf_counter() - start
    run_info = {
        "build_seconds": round(seconds, 3),
        "peak_memory_mib": peak_rss_mib(),
        "peak_gpu_memory_mib": peak_gpu_memory_mib(),
        "device": str(args.device),
    }
    save_projector(projector, args.out, report_ks, extra=run_info)
    print(
        f"wrote {args.out}: {len(projector.bases)} matrices, k_max={projector.k_max}, "
        f"weights {projector.weights_sha256[:12]}, {seconds:.1f} s",
        file=sys.stderr,
    )


def _add_int_flags(parser: argparse.ArgumentParser, defaults: object, names: tuple[str, ...]) -> None:
    """One ``--some-name N`` flag per dataclass field, defaulting to the dataclass's default."""
    for name in names:
        value = getattr(defaults, name)
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=value, help=f"default {value}")


def _add_demo_data_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DemoSizes()
    parser.add_argument("--out", type=Path, required=True, help="folder to create (must not exist)")
    parser.add_argument("--seed", type=int, default=0, help="world seed: the same seed gives byte-identical files")
    _add_int_flags(parser, defaults, ("train_per_class", "val_per_class", "test_per_class", "image_size"))


def _run_demo_data(args: argparse.Namespace) -> None:
    _check_seed(args.seed)
    sizes = DemoSizes(args.train_per_class, args.val_per_class, args.test_per_class, args.image_size)
    start = time.perf_counter()
    write_demo_world(args.out, args.seed, sizes)
    print(f"wrote {args.out}: {len(TASKS)} tasks in {time.perf_counter() - start:.1f} s", file=sys.stderr)


def _add_demo_pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = PretrainSettings()
    parser.add_argument("--data", type=Path, required=True, help="the demo world folder (from demo-data)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the checkpoint and metadata.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (weights are reproducible per thread count)")
    _add_int_flags(parser, defaults, ("steps", "batch_size", "pool_size"))


def _check_seed(seed: int) -> None:
    if seed < 0:
        raise ComploraError(f"--seed {seed}: must be 0 or more")


def _run_demo_pretrain(args: argparse.Namespace) -> None:
    _check_seed(args.seed)
    if args.threads is not None:
        if args.threads < 1:
            raise ComploraError(f"--threads {args.threads}: must be 1 or more")
        torch.set_num_threads(args.threads)
    settings = PretrainSettings(steps=args.steps, batch_size=args.batch_size, pool_size=args.pool_size)
    metadata = pretrain(args.data, args.out, args.seed, settings)
    gates = metadata["quality_gates"]
    print(
        f"wrote {args.out}: zero-shot top-1 {metadata['zero_shot_top1']}, quality gates "
        f"{'passed' if gates['passed'] else 'FAILED'}, {metadata['wall_seconds']} s",
        file=sys.stderr,
    )


VERBS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None]]] = {
    "projector": (
        "cache the principal singular bases of every adapted matrix of a backbone",
        _add_projector_arguments,
        _run_projector,
    ),
    "demo-data": (
        "generate the demo world's downstream datasets (images, split files, class names, captions)",
        _add_demo_data_arguments,
        _run_demo_data,
    ),
    "demo-pretrain": (
        "pretrain the demo's tiny CLIP contrastively on captioned scenes of the demo world",
        _add_demo_pretrain_arguments,
        _run_demo_pretrain,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="complora", description="Comp-LoRA / LoRA few-shot CLIP pipeline")
    parser.add_argument("--version", action="version", version=f"complora {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, (summary, add_arguments, _) in VERBS.items():
        add_arguments(verbs.add_parser(name, help=summary, description=summary))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        VERBS[args.verb][2](args)
    except ComploraError as error:
        print(f"complora {args.verb}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
