"""Few-shot training on augmented crops: the loop (:func:`train_loop`) every tower-level method shares, and
the fine-tuning of an adapted CLIP, CLIP-LoRA style (:func:`finetune`, docs/design.md, "LoRA and Comp-LoRA").

The loop: batches, crops, optimiser and schedule (AdamW with a per-step cosine, CLIP-LoRA's; or SGD with
Dassl's per-epoch schedule, the prompt learners'), the training curve, checkpoints, exact resume and stop
signals; the final iterate returned (no selection on test). What it trains and the loss are the method's.

Fine-tuning: cross-entropy over cosine logits (scale 100) between augmented images and the class prompts.
Text features are recomputed every step only when the text tower has trainable parameters, on the prompts'
exact short context (complora.text). With a checkpoint (complora.checkpoint) a killed run resumes where it
stopped and, on a CPU, ends exactly as an uninterrupted one.

On CUDA a step does not wait for the GPU: crops and labels go through pinned memory with non-blocking
copies, AdamW runs fused, and the loss stays on the device, read back only at the training curve's points
(about a hundred per run) and at checkpoints. ``compile_step`` runs the towers through ``torch.compile``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import Checkpointing
from .data.images import EvalTransform, normalize
from .data.training import TrainingImages
from .errors import ComploraError
from .evaluation import DEFAULT_TEMPLATE, tower_autocast
from .progress import progress_bar
from .schedules import dassl_learning_rate
from .stopping import StopSignals
from .text import prompt_encoder

log = logging.getLogger(__name__)


ADAMW_COSINE, SGD_DASSL = "adamw_cosine", "sgd_dassl"


@dataclass(frozen=True)
class FinetuneSettings:
    """The optimisation hyperparameters: CLIP-LoRA's by default (``iterations`` is 500 x shots in the paper).

    ``optimizer`` ``adamw_cosine``: AdamW, cosine from ``learning_rate`` to ``min_learning_rate`` over the
    steps. ``sgd_dassl`` (CoOp's code base): SGD with ``momentum`` and L2 ``weight_decay``, ``epoch_steps``
    steps per epoch, the first epoch at ``warmup_learning_rate``, then a cosine over the epochs shifted by one
    (complora.schedules); ``iterations`` is then a whole number of epochs."""

    iterations: int
    batch_size: int = 32
    learning_rate: float = 2e-4
    weight_decay: float = 1e-2
    min_learning_rate: float = 1e-6
    logit_scale: float = 100.0
    template: str = DEFAULT_TEMPLATE
    crop_scale: tuple[float, float] = (0.08, 1.0)
    optimizer: str = ADAMW_COSINE
    momentum: float = 0.9
    warmup_learning_rate: float = 1e-5
    epoch_steps: int = 1

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.batch_size < 1:
            raise ComploraError(
                f"iterations and batch_size must be at least 1, got {self.iterations}, {self.batch_size}"
            )
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ComploraError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if self.optimizer not in (ADAMW_COSINE, SGD_DASSL):
            raise ComploraError(f"optimizer {self.optimizer!r}: expected {ADAMW_COSINE} or {SGD_DASSL}")
        if self.epoch_steps < 1 or self.iterations % self.epoch_steps:
            raise ComploraError(
                f"iterations {self.iterations} must be a whole number of epochs of {self.epoch_steps} step(s)"
            )

    def optimizer_and_schedule(
        self, parameters: list[nn.Parameter], device: torch.device
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        if self.optimizer == ADAMW_COSINE:
            optimizer = torch.optim.AdamW(
                parameters, lr=self.learning_rate, weight_decay=self.weight_decay, fused=device.type == "cuda"
            )
            return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, self.iterations, self.min_learning_rate
            )
        optimizer = torch.optim.SGD(
            parameters, lr=self.learning_rate, momentum=self.momentum, weight_decay=self.weight_decay
        )
        epochs, warmup = self.iterations // self.epoch_steps, self.warmup_learning_rate / self.learning_rate
        return optimizer, torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: dassl_learning_rate(step // self.epoch_steps, 1.0, epochs, warmup)
        )


def dassl_epoch_steps(images: int, batch_size: int) -> int:
    """Steps per epoch as Dassl's loader gives them: the last partial batch dropped when there is a full one
    (the loop's batches, :func:`train_loop`)."""
    return max(1, images // batch_size)


def curve_interval(iterations: int) -> int:
    """Steps between the training curve's points: about a hundred per run, whatever its length."""
    return max(1, iterations // 100)


def _text_tower_trainable(model: nn.Module) -> bool:
    return any(p.requires_grad for name, p in model.named_parameters() if not name.startswith("visual."))


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


@dataclass
class _LoopState:
    """Everything besides the model and optimizer that decides the next step: with it a resumed run draws
    the same batches, crops and dropout masks as an uninterrupted one."""

    step: int = 0
    order: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    position: int = 0
    loss: float = 0.0
    train_seconds: float = 0.0
    # The training curve: (step, mean loss since the previous point, learning rate of the step).
    curve: list[tuple[int, float, float]] = field(default_factory=list)
    window_loss: float = 0.0
    window_steps: int = 0


def _snapshot(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    loop: _LoopState,
    device: torch.device,
) -> dict[str, Any]:
    return {
        "loop": dict(vars(loop)),
        "parameters": {name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _restore(
    checkpointing: Checkpointing,
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    device: torch.device,
) -> _LoopState:
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(trainable) != set(state["parameters"]):
        raise ComploraError(
            f"{checkpointing.path}: its trainable parameters are not this model's; delete it to start again"
        )
    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(state["parameters"][name])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and state["cuda_rng"] is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    return _LoopState(**state["loop"])


def finetune(
    model: nn.Module,
    tokenizer: Callable,
    images: TrainingImages,
    classnames: list[str],
    settings: FinetuneSettings,
    seed: int = 0,
    *,
    transform: EvalTransform,
    checkpointing: Checkpointing | None = None,
    stop: StopSignals | None = None,
    compile_step: bool = False,
) -> dict[str, Any]:
    """Train the model's trainable parameters (its adapters) on the few-shot set, the cross-entropy of the
    cosine logits between the crops and the class prompts; returns loss and timing figures
    (:func:`train_loop`). Crops are normalised with ``transform``'s mean and std (the backbone's own)."""
    device = next(model.parameters()).device
    prompts = tokenizer([settings.template.format(name) for name in classnames]).to(device)
    encode_prompts = prompt_encoder(model, prompts)
    text_trainable = _text_tower_trainable(model)
    autocast = tower_autocast(device)
    mean, std = transform.normalization(device)
    if not text_trainable:
        with torch.no_grad(), autocast:
            fixed_text = F.normalize(encode_prompts().float(), dim=-1)

    def step_loss(crops: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with autocast:
            image_features = model.encode_image(normalize(crops, mean, std))
            text = encode_prompts() if text_trainable else fixed_text
        # The towers under autocast, the classifier (logits and loss) in float32.
        image_features = F.normalize(image_features.float(), dim=-1)
        text = F.normalize(text.float(), dim=-1) if text_trainable else text
        return F.cross_entropy(settings.logit_scale * image_features @ text.T, targets)

    return train_loop(
        model,
        step_loss,
        images,
        settings,
        seed,
        device=device,
        checkpointing=checkpointing,
        stop=stop,
        compile_step=compile_step,
    )


def train_loop(
    trainable: nn.Module,
    step_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: TrainingImages,
    settings: FinetuneSettings,
    seed: int = 0,
    *,
    device: torch.device,
    checkpointing: Checkpointing | None = None,
    stop: StopSignals | None = None,
    compile_step: bool = False,
) -> dict[str, Any]:
    """Optimise the parameters of ``trainable`` that require gradients: each step draws a batch of the
    few-shot images (a fresh permutation when too few are left: the last partial batch is dropped when there
    is a full one), crops them, and steps on ``step_loss(crops, labels)`` (crops as uint8, on ``device``).

    With ``checkpointing`` the run resumes from the checkpoint it finds (if it is this run's) and saves one
    every ``checkpointing.every`` steps and at the end; with ``stop``, a SIGTERM / SIGINT during a step
    saves a checkpoint after that step and raises :class:`JobStopped`.

    ``curve`` in the result: (step, mean loss over the steps since the previous point, learning rate) about a
    hundred times per run (:func:`curve_interval`), kept in the checkpoint so a resumed run has all of it.

    ``compile_step`` runs ``step_loss`` through ``torch.compile``: an execution choice, not part of the run's
    identity (it changes rounding, not the dropout masks, which stay torch's own)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout masks
    parameters = [p for p in trainable.parameters() if p.requires_grad]
    optimizer, schedule = settings.optimizer_and_schedule(parameters, device)

    # fallback_random: Inductor would otherwise draw the dropout masks from a generator of its own.
    forward = torch.compile(step_loss, options={"fallback_random": True}) if compile_step else step_loss

    saved = checkpointing.load() if checkpointing else None
    loop = _restore(checkpointing, saved, trainable, optimizer, schedule, generator, device) if saved else _LoopState()
    resumed_at = loop.step if saved else None
    if saved:
        log.info("resuming from %s at step %d of %d", checkpointing.path, loop.step, settings.iterations)
    # The curve's running sum stays on the device (float64, as the Python floats it replaces) between its points.
    window_loss = torch.tensor(loop.window_loss, dtype=torch.float64, device=device)
    last_loss = torch.tensor(loop.loss, device=device)

    def read_back() -> None:
        loop.loss, loop.window_loss = last_loss.item(), window_loss.item()

    def save() -> None:
        if checkpointing:
            read_back()
            checkpointing.save(_snapshot(trainable, optimizer, schedule, generator, loop, device))

    every = curve_interval(settings.iterations)
    trainable.train()
    session_start = time.perf_counter()
    progress = progress_bar(total=settings.iterations, initial=loop.step, desc="training", unit="it", leave=False)
    with progress, stop.protected() if stop else nullcontext():
        while loop.step < settings.iterations and not (stop and stop.requested):
            if loop.position + settings.batch_size > len(loop.order):
                loop.order, loop.position = torch.randperm(len(images), generator=generator), 0
            batch = loop.order[loop.position : loop.position + settings.batch_size]
            loop.position += settings.batch_size
            crops = _to_device(images.crops(batch, settings.crop_scale, generator), device)
            loss = forward(crops, _to_device(images.labels[batch], device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            learning_rate = optimizer.param_groups[0]["lr"]
            schedule.step()
            loop.step += 1
            last_loss = loss.detach()
            window_loss += last_loss
            loop.window_steps += 1
            if loop.step % every == 0 or loop.step == settings.iterations:
                read_back()
                loop.curve.append((loop.step, loop.window_loss / loop.window_steps, learning_rate))
                window_loss.zero_()
                loop.window_loss, loop.window_steps = 0.0, 0
                progress.set_postfix(loss=f"{loop.loss:.3f}", refresh=False)
            loop.train_seconds += time.perf_counter() - session_start
            session_start = time.perf_counter()
            progress.update()
            if checkpointing and (loop.step % checkpointing.every == 0 or loop.step == settings.iterations):
                save()
        if stop and stop.requested:
            save()
        read_back()
        if device.type == "cuda":
            # The queued steps belong to the training time.
            torch.cuda.synchronize(device)
        loop.train_seconds += time.perf_counter() - session_start
    if stop:
        kept = f", checkpoint saved at step {loop.step}" if checkpointing else ""
        stop.stop_if_requested(f" at training step {loop.step} of {settings.iterations}{kept}")
    trainable.eval()
    return {
        "final_loss": loop.loss,
        "train_seconds": loop.train_seconds,
        "resumed_at_step": resumed_at,
        "curve": [tuple(point) for point in loop.curve],
    }
