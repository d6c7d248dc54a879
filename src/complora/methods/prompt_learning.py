"""Prompt learning (README, "Methods"): learned context vectors in front of each class name's
tokens, run through the frozen text tower; only the context (and CoCoOp's Meta-Net) is trained.

- ``coop4``: CoOp with M = 4 context vectors initialised from the embeddings of "a photo of a" (CoOp's
  ``_ctxv1`` configs); at step 0 it is zero-shot CLIP with "a photo of a {}.".
- ``coop16``: CoOp with M = 16 vectors drawn from N(0, 0.02^2).
- ``kgcoop``: CoOp (4) plus the knowledge-guided loss ``kg_weight * (1 - mean_k cos(t_k, t_k^hand))`` between
  the learned prompts' class features and the hand-crafted prompts' (zero at initialisation).
- ``cocoop``: CoOp (4) plus the Meta-Net (Linear d -> d/16, ReLU, Linear d/16 -> width) whose output for each
  image's unit feature is added to every context vector: K prompts encoded per image, in training and test.

One context is shared by all classes and the class token sits at the end ([SOS] v_1 .. v_M name . [EOS]).
The prompts run on the exact short context (complora.text). Training is the shared loop
(complora.finetune.train_loop) with the official schedules: SGD (momentum 0.9, L2 weight decay 5e-4), lr
0.002, one warm-up epoch at 1e-5 then a cosine over the epochs, and the official epochs and batch sizes
(CoOp 50 / 100 / 100 / 200 / 200 epochs for 1 / 2 / 4 / 8 / 16 shots, ImageNet 50; KgCoOp 100 at batch 128;
CoCoOp 10 at batch 1), the last epoch kept. KgCoOp's hand-crafted prompts are its own per dataset: CoOp's
prompt, except DTD's "a photo of a {}, a type of texture." and ImageNet's single "a photo of a {}." (reference
§2.4); a dataset without a CoOp prompt (the demo's, custom ones) takes the study's prompt.

Differences from the official code: the crops are the loop's (RandomResizedCrop 0.08-1 with flip, as
Dassl's, but from complora's generator); the towers run under bf16 autocast on CUDA with float32 context and
optimiser state, where the official code keeps everything fp16; KgCoOp's hand-crafted features come from the
same frozen model rather than a second copy of it (the same features).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ComploraError
from ..evaluation import text_classifier, tower_autocast
from ..schedules import coop_epochs
from ..text import embedding_encoder, pooled_positions

CONTEXT_INIT = "a photo of a"
_OPTIMISATION = {
    "learning_rate": 0.002,
    "momentum": 0.9,
    "weight_decay": 0.0005,
    "warmup_learning_rate": 1e-05,
    "logit_scale": 100,
}
# The official values (the config schema holds the same defaults; a test keeps the two equal). A null
# ``epochs`` is CoOp's count for the shots (complora.schedules.coop_epochs).
DEFAULTS = {
    "coop4": {"context_length": 4, "context_init": CONTEXT_INIT, "epochs": None, "batch_size": 32, **_OPTIMISATION},
    "coop16": {"context_length": 16, "context_init": None, "epochs": None, "batch_size": 32, **_OPTIMISATION},
    "kgcoop": {
        "context_length": 4,
        "context_init": CONTEXT_INIT,
        "epochs": 100,
        "batch_size": 128,
        "kg_weight": 8.0,
        **_OPTIMISATION,
    },
    "cocoop": {
        "context_length": 4,
        "context_init": CONTEXT_INIT,
        "epochs": 10,
        "batch_size": 1,
        "meta_net_reduction": 16,
        **_OPTIMISATION,
    },
}
# Settings whose null means something (a random context; CoOp's epochs for the shots) whatever the default.
NULLABLE = frozenset({"context_init", "epochs"})
RANDOM_INIT_STD = 0.02
# Prompts encoded at once when each image has its own (CoCoOp's test): bounds the activations' memory.
CONDITIONED_PROMPTS_PER_PASS = 4096


# KgCoOp's CUSTOM_TEMPLATES where they are not CoOp's prompt for the dataset (reference §2.4).
KGCOOP_PROMPTS = {"DTD": "a photo of a {}, a type of texture.", "ImageNet": "a photo of a {}."}


def resolve(
    family: str, dataset: str, shots: int, settings: dict[str, Any], coop_templates: list[str]
) -> dict[str, Any]:
    """The settings with their nulls resolved (CoOp's epochs per shot) and, for KgCoOp, its hand-crafted
    prompt for the dataset (``coop_templates``: CoOp's prompt(s) for it, or the study's prompt)."""
    resolved = {**settings, "epochs": settings["epochs"] or coop_epochs(dataset, shots)}
    if family == "kgcoop":
        resolved["hand_crafted_template"] = KGCOOP_PROMPTS.get(dataset, coop_templates[0])
    return resolved


class PromptLearner(nn.Module):
    """The learned context (and CoCoOp's Meta-Net) of a frozen CLIP; class prompts from :meth:`prompts`."""

    def __init__(
        self, model: nn.Module, tokenizer: Callable, settings: dict[str, Any], seed: int, meta_net: bool = False
    ) -> None:
        super().__init__()
        self.model, self.tokenizer = [model], tokenizer  # in a list: the frozen model is no submodule
        device = next(model.parameters()).device
        width = model.token_embedding.weight.shape[1]
        init = settings["context_init"]
        if init:
            tokens = tokenizer([init]).to(device)
            self.context_tokens = tokens[0, 1 : int(pooled_positions(model, tokens)[0])]
            if len(self.context_tokens) != settings["context_length"]:
                raise ComploraError(
                    f"context_init {init!r} is {len(self.context_tokens)} token(s), context_length "
                    f"{settings['context_length']}: give them the same length (or context_init: null, random)"
                )
            with torch.no_grad():
                vectors = model.token_embedding(self.context_tokens).float()
        else:
            # CoOp's placeholder word "X" stands at the context positions; their embeddings are replaced.
            placeholder = tokenizer(["X"])[0, 1].to(device)
            self.context_tokens = placeholder.repeat(settings["context_length"])
            generator = torch.Generator().manual_seed(seed)
            vectors = torch.randn(settings["context_length"], width, generator=generator) * RANDOM_INIT_STD
        self.context = nn.Parameter(vectors.to(device))
        self.meta_net = None
        if meta_net:
            embed = model.visual.output_dim
            hidden = embed // settings["meta_net_reduction"]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.meta_net = nn.Sequential(nn.Linear(embed, hidden), nn.ReLU(), nn.Linear(hidden, width)).to(device)

    def prompts(self, classnames: list[str]) -> ClassPrompts:
        return ClassPrompts(self, classnames)


class ClassPrompts:
    """The prompts [SOS] context name . [EOS] of some classes, encoded with the learner's context."""

    def __init__(self, learner: PromptLearner, classnames: list[str]) -> None:
        (model,) = learner.model
        self.learner, self.classes = learner, len(classnames)
        names = learner.tokenizer([f"{name}." for name in classnames]).to(learner.context.device)
        length = len(learner.context_tokens)
        ends = pooled_positions(model, names)
        if int(ends.max()) + length >= names.shape[1]:
            raise ComploraError(
                f"a class prompt with {length} context tokens exceeds the text context of {names.shape[1]} tokens"
            )
        context = learner.context_tokens.unsqueeze(0).expand(len(names), -1)
        tokens = torch.cat([names[:, :1], context, names[:, 1 : names.shape[1] - length]], dim=1)
        self.tokens, self.encode = embedding_encoder(model, tokens)
        with torch.no_grad():
            embedded = model.token_embedding(self.tokens)
        self.prefix, self.suffix = embedded[:, :1], embedded[:, 1 + length :]

    def embeddings(self, context: torch.Tensor) -> torch.Tensor:
        """(R * C, L, width) prompt embeddings for (R, M, width) contexts (R images' own, or one shared)."""
        repeats = context.shape[0]
        context = context.to(self.prefix.dtype).repeat_interleave(self.classes, dim=0)
        prefix, suffix = self.prefix.repeat(repeats, 1, 1), self.suffix.repeat(repeats, 1, 1)
        return torch.cat([prefix, context, suffix], dim=1)

    def features(self) -> torch.Tensor:
        """(C, D) class features with the shared context."""
        return self.encode(self.embeddings(self.learner.context.unsqueeze(0)))

    def conditioned_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """(B, C, D) class features with each image's context (CoCoOp: the context plus the Meta-Net's output
        for the image's unit feature)."""
        bias = self.learner.meta_net(image_features.to(self.learner.context.dtype))
        contexts = self.learner.context.unsqueeze(0) + bias.unsqueeze(1)
        return self.encode(self.embeddings(contexts)).reshape(len(image_features), self.classes, -1)


def conditioned_logits(prompts: ClassPrompts, image_features: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, C) logits of unit image features against their own class features."""
    text = F.normalize(prompts.conditioned_features(image_features).float(), dim=-1)
    return scale * torch.einsum("bd,bcd->bc", image_features.float(), text)


class Objective:
    """A family's learner and its training loss on crops (complora.finetune.train_loop)."""

    def __init__(
        self,
        family: str,
        model: nn.Module,
        tokenizer: Callable,
        classnames: list[str],
        settings: dict[str, Any],
        seed: int,
        *,
        normalize: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        """``settings`` resolved (:func:`resolve`)."""
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.family, self.model, self.settings, self.normalize = family, model, settings, normalize
        self.learner = PromptLearner(model, tokenizer, settings, seed, meta_net=family == "cocoop")
        self.prompts = self.learner.prompts(classnames)
        self.autocast = tower_autocast(next(model.parameters()).device)
        self.hand_crafted = None
        if family == "kgcoop":
            self.hand_crafted = text_classifier(model, tokenizer, classnames, settings["hand_crafted_template"])

    def text_features(self) -> torch.Tensor:
        with self.autocast:
            return F.normalize(self.prompts.features().float(), dim=-1)

    def knowledge_loss(self, text: torch.Tensor) -> torch.Tensor:
        """KgCoOp's term: kg_weight * (1 - mean cosine of the learned and the hand-crafted class features)."""
        return self.settings["kg_weight"] * (1 - (text * self.hand_crafted).sum(dim=-1).mean())

    def loss(self, crops: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.autocast:
            image_features = self.model.encode_image(self.normalize(crops))
        image_features = F.normalize(image_features.float(), dim=-1)
        scale = self.settings["logit_scale"]
        if self.learner.meta_net is not None:
            with self.autocast:
                return F.cross_entropy(conditioned_logits(self.prompts, image_features, scale), targets)
        text = self.text_features()
        loss = F.cross_entropy(scale * image_features @ text.T, targets)
        return loss + self.knowledge_loss(text) if self.hand_crafted is not None else loss

    @torch.no_grad()
    def classifier(self, classnames: list[str]) -> torch.Tensor | Callable[[torch.Tensor], torch.Tensor]:
        """The test classifier of ``classnames`` (complora.evaluation): the class features, or for CoCoOp a
        function of each batch's unit image features."""
        prompts = self.learner.prompts(classnames)
        if self.learner.meta_net is None:
            with self.autocast:
                return F.normalize(prompts.features().float(), dim=-1)
        chunk = max(1, CONDITIONED_PROMPTS_PER_PASS // len(classnames))
        scale = self.settings["logit_scale"]

        def logits(features: torch.Tensor) -> torch.Tensor:
            with self.autocast:
                return torch.cat([conditioned_logits(prompts, part, scale) for part in features.split(chunk)])

        return logits
