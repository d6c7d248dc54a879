"""The ``complora`` command: one verb per pipeline step. Rules of the workflow call these verbs."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .artifacts import request_argument
from .errors import ComploraError
from .stopping import JobStopped

# Verbs import their heavy modules (torch, open_clip) inside their functions: a job that only draws a
# k-shot split then starts in a fraction of a second, which matters with hundreds of jobs.


def _add_projector_arguments(parser: argparse.ArgumentParser) -> None:
    from .adapters.config import TARGETS, TOWERS, AdapterConfig

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


def _run_projector(args: argparse.Namespace) -> None:
    from .adapters.config import AdapterConfig, parse_k
    from .devices import select_device
    from .models import load_clip
    from .runinfo import peak_gpu_memory_mib, peak_rss_mib
    from .subspace import build_projector, save_projector

    if args.out.suffix != ".safetensors":
        raise ComploraError(f"--out {args.out}: the projector file must end in .safetensors")
    if args.k_max < 0:
        raise ComploraError(f"--k-max {args.k_max}: must be 0 or more")
    select_device(args.device)
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
    from .demo.datasets import DemoSizes

    defaults = DemoSizes()
    parser.add_argument("--out", type=Path, required=True, help="folder to create (must not exist)")
    parser.add_argument("--seed", type=int, default=0, help="world seed: the same seed gives byte-identical files")
    _add_int_flags(parser, defaults, ("train_per_class", "val_per_class", "test_per_class", "image_size"))


def _run_demo_data(args: argparse.Namespace) -> None:
    from .demo.datasets import DemoSizes, write_demo_world
    from .demo.tasks import TASKS

    _check_seed(args.seed)
    sizes = DemoSizes(args.train_per_class, args.val_per_class, args.test_per_class, args.image_size)
    start = time.perf_counter()
    write_demo_world(args.out, args.seed, sizes)
    print(f"wrote {args.out}: {len(TASKS)} tasks in {time.perf_counter() - start:.1f} s", file=sys.stderr)


def _add_demo_pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    from .demo.pretrain import PretrainSettings

    defaults = PretrainSettings()
    parser.add_argument("--data", type=Path, required=True, help="the demo world folder (from demo-data)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the checkpoint and metadata.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (weights are reproducible per thread count)")
    _add_int_flags(parser, defaults, ("steps", "batch_size", "pool_size"))


def _check_seed(seed: int) -> None:
    if seed < 0:
        raise ComploraError(f"--seed {seed}: must be 0 or more")


def _add_request_argument(parser: argparse.ArgumentParser, *, repeatable: bool = False) -> None:
    parser.add_argument(
        "--request",
        type=request_argument,
        action="append" if repeatable else "store",
        default=[] if repeatable else None,
        help="what the workflow asked this job for (JSON text, recorded as is in metrics.json: a later config "
        "that asks for something else finds the run stale)"
        + ("; one per --few-shot, same order" if repeatable else ""),
    )


def _check_request(request: dict | None, flags: dict[str, object]) -> None:
    """A job records the request it was given only if its own flags say the same: the record is what the
    job ran with, whatever else happened to the workflow meanwhile."""
    if request is None:
        return
    wrong = [
        f"{key}: the request says {json.dumps(request.get(key))}, the flags {json.dumps(value)}"
        for key, value in flags.items()
        if json.loads(json.dumps(request.get(key))) != json.loads(json.dumps(value))
    ]
    if wrong:
        raise ComploraError("--request does not describe this job's flags:\n  " + "\n  ".join(wrong))


def _common_request_flags(args: argparse.Namespace) -> dict[str, object]:
    """The request keys every run's flags give: the dataset, the prompt, the backbone."""
    return {"dataset": args.dataset, "template": args.template,
            "backbone": {"model": args.model, "pretrained": args.pretrained}}  # fmt: skip


def _set_threads(threads: int | None) -> None:
    import torch

    if threads is not None:
        if threads < 1:
            raise ComploraError(f"--threads {threads}: must be 1 or more")
        torch.set_num_threads(threads)


def _run_demo_pretrain(args: argparse.Namespace) -> None:
    from .demo.pretrain import PretrainSettings, pretrain

    _check_seed(args.seed)
    _set_threads(args.threads)
    settings = PretrainSettings(steps=args.steps, batch_size=args.batch_size, pool_size=args.pool_size)
    metadata = pretrain(args.data, args.out, args.seed, settings)
    gates = metadata["quality_gates"]
    print(
        f"wrote {args.out}: zero-shot top-1 {metadata['zero_shot_top1']}, quality gates "
        f"{'passed' if gates['passed'] else 'FAILED'}, {metadata['wall_seconds']} s",
        file=sys.stderr,
    )


def _add_split_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split-file", type=Path, required=True, help="the dataset's CoOp split file (JSON)")
    parser.add_argument("--dataset", required=True, help="dataset name, recorded in the k-shot split")
    parser.add_argument("--shots", type=int, required=True, help="training images per class")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="k-shot split file to write (JSON)")
    _add_protocol_argument(parser, "base_to_new: draw from the base classes only")


def _add_protocol_argument(parser: argparse.ArgumentParser, what: str) -> None:
    from .data.base_to_new import ALL, PROTOCOLS

    parser.add_argument("--protocol", choices=PROTOCOLS, default=ALL, help=f"{what} (default {ALL})")


def _run_split(args: argparse.Namespace) -> None:
    from .data.splits import few_shot_split, write_few_shot_split

    split = few_shot_split(args.split_file, args.dataset, args.shots, args.seed, args.protocol)
    write_few_shot_split(split, args.out)
    print(f"wrote {args.out}: {len(split['train'])} train, {len(split['val'])} val items", file=sys.stderr)


def _add_images_and_backbone_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset name")
    parser.add_argument("--data", type=Path, required=True, help="the dataset's image folder")
    parser.add_argument("--split-file", type=Path, required=True, help="the dataset's CoOp split file")
    parser.add_argument("--model", required=True, help="open_clip architecture name or JSON config")
    parser.add_argument("--pretrained", required=True, help="open_clip pretrained tag or checkpoint path")


def _add_dataset_and_backbone_arguments(parser: argparse.ArgumentParser) -> None:
    _add_images_and_backbone_arguments(parser)
    parser.add_argument("--device", default="auto", help="auto (a CUDA GPU when visible, else cpu), cpu, cuda:N")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's) and image-decoding threads (default: 1)"
    )


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    from .evaluation import DEFAULT_BATCH_SIZE

    parser.add_argument(
        "--eval-cache",
        type=Path,
        help="the dataset's evaluation cache (from `complora eval-cache`); default: decode the test images",
    )
    parser.add_argument("--eval-batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per evaluation batch")


def _data_settings(args: argparse.Namespace):
    from .experiment import DataSettings

    options = {"threads": args.threads or 1, "eval_batch_size": args.eval_batch_size}
    if hasattr(args, "train_memory_mib"):  # train's flag
        options["train_memory_limit_mib"] = args.train_memory_mib
    return DataSettings(**options)


def _dataset_ref(args: argparse.Namespace):
    from .data.testset import DatasetRef

    return DatasetRef(args.dataset, args.data, args.split_file, args.eval_cache)


def _add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from .evaluation import DEFAULT_TEMPLATE

    _add_dataset_and_backbone_arguments(parser)
    _add_data_arguments(parser)
    parser.add_argument("--template", default=DEFAULT_TEMPLATE, help="prompt template with one {} for the class")
    parser.add_argument(
        "--coop-template",
        action="append",
        default=[],
        help="CoOp's prompt for the dataset (repeatable: an ensemble); its accuracy is recorded as well",
    )
    parser.add_argument("--out", type=Path, required=True, help="metrics.json to write")
    _add_request_argument(parser)
    _add_protocol_argument(parser, "base_to_new: the base and the new classes' accuracies and their harmonic mean")


def _run_evaluate(args: argparse.Namespace) -> None:
    from .experiment import Backbone, evaluate_zero_shot

    flags = {"method": "zeroshot", "protocol": args.protocol, "coop_templates": args.coop_template}
    _check_request(args.request, {**_common_request_flags(args), **flags, "device": f"--device {args.device}"})
    _set_threads(args.threads)
    evaluate_zero_shot(
        _dataset_ref(args),
        Backbone(args.model, args.pretrained),
        args.out,
        template=args.template,
        device=args.device,
        coop_templates=args.coop_template,
        data=_data_settings(args),
        request=args.request,
        protocol=args.protocol,
    )


def _add_eval_cache_arguments(parser: argparse.ArgumentParser) -> None:
    _add_images_and_backbone_arguments(parser)
    parser.add_argument("--threads", type=int, default=1, help="threads that decode images")
    parser.add_argument("--out", type=Path, required=True, help="cache folder to write (pixels.npy, manifest.json)")


def _run_eval_cache(args: argparse.Namespace) -> None:
    from .data.evalcache import build_eval_cache
    from .data.images import EvalTransform
    from .data.splits import read_split
    from .models import load_clip

    if args.threads < 1:
        raise ComploraError(f"--threads {args.threads}: must be 1 or more")
    start = time.perf_counter()
    transform = EvalTransform.for_model(load_clip(args.model, args.pretrained))
    entries = read_split(args.split_file)["test"]
    manifest = build_eval_cache(
        args.dataset, args.data, args.split_file, entries, transform, args.out, threads=args.threads
    )
    seconds = time.perf_counter() - start
    print(
        f"wrote {args.out}: {manifest['count']} test images of {args.dataset} at {transform.size}, "
        f"{manifest['bytes'] / 2**20:.1f} MiB, {seconds:.1f} s ({manifest['count'] / seconds:.0f} images/s)",
        file=sys.stderr,
    )


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from .adapters.config import METHODS, SCALINGS, SIDES, TARGETS, TOWERS, AdapterConfig
    from .finetune import FinetuneSettings

    adapter = AdapterConfig()
    _add_dataset_and_backbone_arguments(parser)
    _add_data_arguments(parser)
    from .data.training import DEFAULT_MEMORY_LIMIT_MIB

    parser.add_argument(
        "--train-memory-mib",
        type=float,
        default=DEFAULT_MEMORY_LIMIT_MIB,
        help="hold the decoded training originals in memory up to this size, else decode each batch "
        f"(default {DEFAULT_MEMORY_LIMIT_MIB})",
    )
    parser.add_argument("--few-shot", type=Path, required=True, help="k-shot split file (from `complora split`)")
    parser.add_argument("--seed", type=int, required=True, help="seeds the adapter init, batches, crops and dropout")
    parser.add_argument("--method", choices=METHODS, required=True, help="the adapter family")
    parser.add_argument("--name", help="the method's name in the study (a variant's; default: the family)")
    parser.add_argument(
        "--zero-shot",
        type=Path,
        action="append",
        default=[],
        help="metrics.json of a zero-shot run (repeatable): the dataset's own (the gain's reference) and one per "
        "retention dataset",
    )
    parser.add_argument("--projector", type=Path, help="cached principal bases (complora; default: SVD now)")
    parser.add_argument("--out-dir", type=Path, required=True, help="run folder: adapter/, curve.csv, metrics.json")
    _add_request_argument(parser)
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=100,
        help="steps between checkpoints (out-dir/checkpoint.pt, also written at the end of training and on "
        "SIGTERM / SIGINT); a rerun resumes from it. 0: no checkpoints (default 100)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="run the training step's towers through torch.compile (benchmarks/README.md says when it pays)",
    )
    group = parser.add_argument_group("adapter")
    group.add_argument("--rank", type=int, default=adapter.rank)
    group.add_argument("--alpha", type=float, default=adapter.alpha)
    group.add_argument("--scaling", choices=SCALINGS, default=adapter.scaling)
    group.add_argument("--dropout", type=float, default=adapter.dropout)
    group.add_argument("--targets", nargs="+", choices=TARGETS, default=list(adapter.targets))
    group.add_argument("--towers", nargs="+", choices=TOWERS, default=list(adapter.towers))
    group.add_argument("--k", default=str(adapter.k), help="complora: int, fraction, or energy:<x>")
    group.add_argument("--side", choices=SIDES, default=adapter.side, help="complora: which sides to project")
    training = FinetuneSettings(iterations=1)
    group = parser.add_argument_group("training")
    group.add_argument("--iterations", type=int, required=True)
    group.add_argument("--batch-size", type=int, default=training.batch_size)
    group.add_argument("--learning-rate", type=float, default=training.learning_rate)
    group.add_argument("--weight-decay", type=float, default=training.weight_decay)
    group.add_argument("--min-learning-rate", type=float, default=training.min_learning_rate)
    group.add_argument("--logit-scale", type=float, default=training.logit_scale)
    group.add_argument("--template", default=training.template)


def _run_train(args: argparse.Namespace) -> None:
    from .experiment import Backbone, TrainSpec, train_and_evaluate
    from .methods.lora import ADAPTER_KEYS, TRAINING_KEYS, adapter_config, finetune_settings

    _check_seed(args.seed)
    _set_threads(args.threads)
    settings = {key: getattr(args, key) for key in (*ADAPTER_KEYS, *TRAINING_KEYS)}
    if args.request is not None:
        asked = args.request.get("hyperparameters") or {}
        shown = {key: str(value) if key == "k" else value for key, value in settings.items() if key in asked}
        _check_request(
            {**args.request, "hyperparameters": {key: str(asked[key]) if key == "k" else asked[key] for key in shown},
             "iterations": asked.get("iterations_per_shot", 0) * args.request.get("shots", 0)},
            {**_common_request_flags(args), "method": args.name or args.method, "family": args.method,
             "seed": args.seed, "hyperparameters": shown, "iterations": args.iterations,
             "device": f"--device {args.device}"},
        )  # fmt: skip
    adapter = adapter_config(args.method, settings)
    settings = finetune_settings(settings, args.iterations, args.template)
    spec = TrainSpec(
        dataset=_dataset_ref(args),
        few_shot_file=args.few_shot,
        backbone=Backbone(args.model, args.pretrained),
        adapter=adapter,
        settings=settings,
        seed=args.seed,
        name=args.name or args.method,
        zero_shot_runs=args.zero_shot,
        projector=args.projector,
        request=args.request,
    )
    _run_stoppable(
        args.out_dir,
        lambda stop: train_and_evaluate(
            spec,
            args.out_dir,
            device=args.device,
            checkpoint_every=args.checkpoint_every,
            stop=stop,
            data=_data_settings(args),
            compile_step=args.compile,
        ),
    )


def _run_stoppable(out_dir: Path, run: Callable) -> None:
    """A training job under SIGTERM / SIGINT handling: a stop says how the rerun goes on."""
    from .checkpoint import CHECKPOINT_FILE
    from .stopping import StopSignals

    try:
        with StopSignals() as stop:
            run(stop)
    except JobStopped as stopped:
        checkpoint = out_dir / CHECKPOINT_FILE
        then = f"resume from {checkpoint}" if checkpoint.is_file() else "start again"
        detail = f"{stopped.detail}; no metrics written: rerun the same command to {then}"
        raise JobStopped(stopped.signum, detail) from None


def _add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    from .data.training import DEFAULT_MEMORY_LIMIT_MIB
    from .evaluation import DEFAULT_TEMPLATE
    from .methods.families import FAMILIES, PROMPT

    _add_dataset_and_backbone_arguments(parser)
    _add_data_arguments(parser)
    parser.add_argument("--train-memory-mib", type=float, default=DEFAULT_MEMORY_LIMIT_MIB, help="as for train")
    parser.add_argument("--few-shot", type=Path, required=True, help="k-shot split file (from `complora split`)")
    parser.add_argument("--seed", type=int, required=True, help="seeds the context init, batches and crops")
    parser.add_argument("--family", required=True, choices=[f for f, spec in FAMILIES.items() if spec.kind == PROMPT])
    parser.add_argument("--name", help="the method's name in the study (default: the family)")
    parser.add_argument("--settings", default="{}", help="the family's hyperparameters as JSON (default: official)")
    parser.add_argument("--zero-shot", type=Path, required=True, help="the dataset's zero-shot metrics.json")
    parser.add_argument("--template", default=DEFAULT_TEMPLATE, help="the study's prompt (the zero-shot run's)")
    parser.add_argument(
        "--coop-template", action="append", default=[], help="CoOp's prompt(s) for the dataset (KgCoOp's target)"
    )
    parser.add_argument("--out-dir", type=Path, required=True, help="run folder: prompt.safetensors, metrics.json")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="as for train (0: no checkpoints)")
    _add_request_argument(parser)


def _family_settings_argument(family: str, text: str) -> dict:
    from .methods.registry import family_settings

    try:
        given = json.loads(text)
        return family_settings(family, given if isinstance(given, dict) else {"": given})
    except (json.JSONDecodeError, ValueError) as error:
        raise ComploraError(f"--settings: {error}") from None


def _run_prompt(args: argparse.Namespace) -> None:
    from .experiment import Backbone, PromptSpec, learn_prompts_and_evaluate

    _check_seed(args.seed)
    settings = _family_settings_argument(args.family, args.settings)
    flags = {"method": args.name or args.family, "family": args.family, "seed": args.seed,
             "coop_templates": args.coop_template, "hyperparameters": json.loads(args.settings)}  # fmt: skip
    _check_request(args.request, {**_common_request_flags(args), **flags, "device": f"--device {args.device}"})
    _set_threads(args.threads)
    spec = PromptSpec(
        dataset=_dataset_ref(args),
        few_shot_file=args.few_shot,
        backbone=Backbone(args.model, args.pretrained),
        family=args.family,
        settings=settings,
        seed=args.seed,
        zero_shot_run=args.zero_shot,
        name=args.name or args.family,
        template=args.template,
        coop_templates=args.coop_template,
        request=args.request,
    )
    _run_stoppable(
        args.out_dir,
        lambda stop: learn_prompts_and_evaluate(
            spec,
            args.out_dir,
            device=args.device,
            checkpoint_every=args.checkpoint_every,
            stop=stop,
            data=_data_settings(args),
        ),
    )


def _add_features_arguments(parser: argparse.ArgumentParser) -> None:
    from .data.training import DEFAULT_MEMORY_LIMIT_MIB

    _add_dataset_and_backbone_arguments(parser)
    _add_data_arguments(parser)
    parser.add_argument("--few-shot", type=Path, action="append", default=[], help="a k-shot split file (repeatable)")
    parser.add_argument(
        "--template", action="append", required=True, help="a prompt template to encode per class (repeatable)"
    )
    parser.add_argument(
        "--views",
        action="append",
        default=[],
        metavar="AUG=N",
        help="N augmented views per k-shot image with augmentation AUG (tip, dassl; repeatable)",
    )
    parser.add_argument("--train-memory-mib", type=float, default=DEFAULT_MEMORY_LIMIT_MIB)
    parser.add_argument("--out", type=Path, required=True, help="the dataset's feature store folder")


def _parse_views(items: list[str]) -> dict[str, int]:
    views = {}
    for item in items:
        name, _, count = item.partition("=")
        if not count.isdigit() or int(count) < 1:
            raise ComploraError(f"--views {item}: expected AUG=N with N >= 1, e.g. tip=10")
        views[name] = int(count)
    return views


def _run_features(args: argparse.Namespace) -> None:
    from .devices import select_device
    from .features.store import build_store
    from .runrecord import Backbone, load_backbone

    _set_threads(args.threads)
    start = time.perf_counter()
    device = select_device(args.device)
    model, tokenizer, transform = load_backbone(Backbone(args.model, args.pretrained), device)
    figures = build_store(
        _dataset_ref(args),
        model,
        tokenizer,
        transform,
        args.few_shot,
        args.template,
        _parse_views(args.views),
        args.out,
        threads=args.threads or 1,
        batch_size=args.eval_batch_size,
        memory_limit_mib=args.train_memory_mib,
    )
    print(
        f"wrote {args.out}: {figures['test_images']} test images, {figures['splits']} k-shot splits, "
        f"dim {figures['dim']}, {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )


def _add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    from .evaluation import DEFAULT_TEMPLATE
    from .methods.families import FAMILIES, FEATURE

    _add_images_and_backbone_arguments(parser)
    parser.add_argument("--family", required=True, choices=[f for f, spec in FAMILIES.items() if spec.kind == FEATURE])
    parser.add_argument("--name", help="the method's name in the study (default: the family)")
    parser.add_argument("--settings", default="{}", help="the family's hyperparameters as JSON (default: official)")
    parser.add_argument("--features", type=Path, required=True, help="the dataset's feature store folder")
    parser.add_argument("--model-metadata", type=Path, required=True, help="metadata.json of the weights artifact")
    parser.add_argument("--few-shot", type=Path, action="append", required=True, help="a k-shot split (repeatable)")
    parser.add_argument("--zero-shot", type=Path, required=True, help="the dataset's zero-shot metrics.json")
    parser.add_argument("--template", default=DEFAULT_TEMPLATE, help="the study's prompt template")
    parser.add_argument("--coop-template", action="append", default=[], help="CoOp's prompt(s) for the dataset")
    parser.add_argument("--out-root", type=Path, required=True, help="the method's folder: shots<k>/seed<s>/")
    _add_request_argument(parser, repeatable=True)
    parser.add_argument("--threads", type=int, help="torch CPU threads")


def _run_fit(args: argparse.Namespace) -> None:
    from .data.testset import DatasetRef
    from .fitting import FitSpec, fit_and_evaluate
    from .runrecord import Backbone

    settings = _family_settings_argument(args.family, args.settings)
    for request in args.request:
        _check_request(request, {**_common_request_flags(args), "method": args.name or args.family,
                                 "family": args.family, "coop_templates": args.coop_template,
                                 "hyperparameters": json.loads(args.settings)})  # fmt: skip
    _set_threads(args.threads)
    spec = FitSpec(
        dataset=DatasetRef(args.dataset, args.data, args.split_file),
        name=args.name or args.family,
        family=args.family,
        settings=settings,
        backbone=Backbone(args.model, args.pretrained),
        features=args.features,
        few_shot_files=args.few_shot,
        zero_shot_run=args.zero_shot,
        model_metadata=args.model_metadata,
        template=args.template,
        coop_templates=args.coop_template,
        requests=args.request,
    )
    start = time.perf_counter()
    runs = fit_and_evaluate(spec, args.out_root)
    accuracies = ", ".join(f"{run['shots']}-shot seed {run['seed']}: {run['accuracy']:.2f}" for run in runs)
    print(f"wrote {args.out_root}: {accuracies} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)


def _add_aggregate_arguments(parser: argparse.ArgumentParser) -> None:
    from .aggregate import DEFAULT_REFERENCE
    from .results.comparisons import DEFAULT_LEVEL

    parser.add_argument("metrics", nargs="+", type=Path, help="the runs' metrics.json files")
    parser.add_argument("--out", type=Path, required=True, help="results folder: tables/, plots/, summary.md")
    parser.add_argument("--reference", type=Path, help="published numbers to show beside ours (Table 3 CSV)")
    parser.add_argument(
        "--requests",
        type=Path,
        help="what the workflow asks of each run (a JSON file: metrics file -> request): a run that answers "
        "another request is refused as stale",
    )
    parser.add_argument(
        "--model-metadata", type=Path, help="metadata.json of the weights artifact: every run must come from it"
    )
    parser.add_argument(
        "--compare-to",
        default=DEFAULT_REFERENCE,
        help=f"the reference method of the paired comparisons (default {DEFAULT_REFERENCE})",
    )
    parser.add_argument(
        "--level",
        type=float,
        default=DEFAULT_LEVEL,
        help=f"confidence level of the comparisons' intervals (default {DEFAULT_LEVEL})",
    )


def _run_aggregate(args: argparse.Namespace) -> None:
    from .aggregate import aggregate

    if not 0 < args.level < 1:
        raise ComploraError(f"--level {args.level}: must be between 0 and 1, e.g. 0.95")
    figures = aggregate(
        args.metrics,
        args.out,
        args.reference,
        requests=args.requests,
        model_metadata=args.model_metadata,
        compare_to=args.compare_to,
        level=args.level,
    )
    print(f"wrote {args.out}: tables, plots and summary.md from {len(args.metrics)} runs", file=sys.stderr)
    print(json.dumps(figures, indent=1), file=sys.stderr)


def _add_config_docs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--schema", type=Path, default=Path("workflow/schemas/config.schema.yaml"))
    parser.add_argument("--out", type=Path, default=Path("config/README.md"))
    parser.add_argument("--check", action="store_true", help="fail if --out differs from what the schema gives")


def _run_config_docs(args: argparse.Namespace) -> None:
    from .atomic import atomic_path
    from .configcheck import load_schema
    from .configdocs import config_reference

    text = config_reference(load_schema(args.schema))
    if args.check:
        current = args.out.read_text() if args.out.is_file() else None
        if current != text:
            raise ComploraError(
                f"{args.out} is not what {args.schema} gives; run `complora config-docs` to regenerate it"
            )
        print(f"{args.out} matches {args.schema}", file=sys.stderr)
        return
    with atomic_path(args.out) as temporary:
        temporary.write_text(text)
    print(f"wrote {args.out} from {args.schema}", file=sys.stderr)


def _add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="benchmark name, e.g. Caltech101 (see complora.data.registry)")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to create: images/, split.json")
    parser.add_argument("--cache", type=Path, required=True, help="download cache (archives and split files)")
    parser.add_argument("--data-root", type=Path, help="folder that may hold the dataset already")
    parser.add_argument("--registry", type=Path, help="YAML overrides of the registry (mirrors, URLs, checksums)")


def _run_dataset(args: argparse.Namespace) -> None:
    from .data.prepare import find_local, prepare_download, prepare_local
    from .data.registry import load_registry

    registry = load_registry(args.registry)
    if args.name not in registry:
        raise ComploraError(f"--name {args.name}: unknown dataset; known: {', '.join(sorted(registry))}")
    spec = registry[args.name]
    local = find_local(spec, args.data_root) if args.data_root else None
    if local is not None:
        prepare_local(spec, local, args.out, args.cache)
    else:
        if args.data_root and spec.downloadable:
            folders = ", ".join(spec.folders)
            print(f"{spec.name}: none of {folders} under {args.data_root}; downloading", file=sys.stderr)
        prepare_download(spec, args.out, args.cache)
    print(f"wrote {args.out}", file=sys.stderr)


def _add_custom_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True)
    parser.add_argument("--images", type=Path, required=True, help="image folder: one sub-folder per class")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split-file", type=Path, help="your CoOp-style split file (default: a seeded 50/20/30 split)")
    parser.add_argument("--classnames", type=Path, help="class names, one per line in sorted folder order")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 50/20/30 split")


def _run_custom_dataset(args: argparse.Namespace) -> None:
    from .data.prepare import prepare_custom

    _check_seed(args.seed)
    prepare_custom(
        args.name, args.images, args.out, split_file=args.split_file, classnames_file=args.classnames, seed=args.seed
    )
    print(f"wrote {args.out}", file=sys.stderr)


def _add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="open_clip architecture, e.g. ViT-B-16")
    parser.add_argument("--pretrained", required=True, help="open_clip tag (e.g. openai) or a local checkpoint file")
    parser.add_argument("--out", type=Path, required=True, help="folder for open_clip_model.safetensors, metadata")
    parser.add_argument("--cache", type=Path, required=True, help="download cache for tagged weights")


def _run_weights(args: argparse.Namespace) -> None:
    from .weights import fetch_weights

    metadata = fetch_weights(args.model, args.pretrained, args.out, args.cache)
    print(f"wrote {args.out}: weights {metadata['weights_sha256'][:12]}", file=sys.stderr)


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
    "dataset": (
        "download (or find locally), verify and lay out one of the paper's benchmarks",
        _add_dataset_arguments,
        _run_dataset,
    ),
    "custom-dataset": (
        "lay out your own image folder or split file as a dataset",
        _add_custom_dataset_arguments,
        _run_custom_dataset,
    ),
    "weights": (
        "pretrained open_clip weights (a tag, downloaded, or a local file) as a pipeline artifact",
        _add_weights_arguments,
        _run_weights,
    ),
    "split": ("draw a k-shot split (CoOp convention) from a dataset's split file", _add_split_arguments, _run_split),
    "eval-cache": (
        "decode a dataset's test split once into the backbone's preprocessed pixels (the evaluation cache)",
        _add_eval_cache_arguments,
        _run_eval_cache,
    ),
    "evaluate": (
        "zero-shot top-1 of the pretrained model on a dataset's test split (writes metrics.json)",
        _add_evaluate_arguments,
        _run_evaluate,
    ),
    "train": (
        "few-shot LoRA / Comp-LoRA training, then test top-1 and zero-shot retention (writes metrics.json)",
        _add_train_arguments,
        _run_train,
    ),
    "prompt": (
        "prompt learning (CoOp, KgCoOp, CoCoOp) on a k-shot split with both towers frozen, then test top-1 "
        "(writes metrics.json)",
        _add_prompt_arguments,
        _run_prompt,
    ),
    "features": (
        "the feature store of a dataset: frozen-tower features of its test split, prompts and k-shot views",
        _add_features_arguments,
        _run_features,
    ),
    "fit": (
        "fit a feature-level method (linear probe, Tip-Adapter, ...) on the stored features of each k-shot split, "
        "then test top-1 (writes metrics.json per split)",
        _add_fit_arguments,
        _run_fit,
    ),
    "aggregate": (
        "tables, comparisons, plots and a summary from the runs' metrics.json files",
        _add_aggregate_arguments,
        _run_aggregate,
    ),
    "config-docs": (
        "write (or --check) config/README.md, the reference of every config key, from the config schema",
        _add_config_docs_arguments,
        _run_config_docs,
    ),
}


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The command line; with ``verb`` given, only that verb's arguments are built (and its imports made)."""
    parser = argparse.ArgumentParser(prog="complora", description="Comp-LoRA / LoRA few-shot CLIP pipeline")
    parser.add_argument("--version", action="version", version=f"complora {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, (summary, add_arguments, _) in VERBS.items():
        subparser = verbs.add_parser(name, help=summary, description=summary)
        if verb in (None, name):
            add_arguments(subparser)
    return parser


# How a full disk shows through the writers complora uses: OSError, safetensors (Rust's io error), torch.save.
DISK_FULL_SIGNS = ("No space left on device", "os error 28", "file write failed")


def _disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return any(sign in str(error) for sign in DISK_FULL_SIGNS)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = argv[0] if argv and argv[0] in VERBS else None
    try:
        args = build_parser(verb).parse_args(argv)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        VERBS[args.verb][2](args)
    except ComploraError as error:
        print(f"complora {verb}: error: {error}", file=sys.stderr)
        return 2
    except JobStopped as stopped:
        print(f"complora {verb}: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except KeyboardInterrupt:
        # Before a verb installs its own handling (imports, set-up): outputs are written atomically, so
        # nothing that looks finished is left.
        print(f"complora {verb}: interrupted; nothing finished was written: rerun the same command", file=sys.stderr)
        return 130
    except (OSError, RuntimeError) as error:
        if not _disk_full(error):
            raise
        where = getattr(error, "filename", None) or "its outputs"
        print(
            f"complora {verb}: error: no space left on device while writing {where}; free space and rerun "
            "(nothing half-written was left)",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
