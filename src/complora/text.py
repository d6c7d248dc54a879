"""The text tower on the exact short context, with the causal mask handed to SDPA as ``is_causal``.

open_clip's ``CLIP.encode_text`` runs every prompt at the full context (77 tokens for ViT-B-16) although
CoOp-style prompts end within the first 20. Under the causal mask a position attends only to itself and
the positions before it, so the features up to the end-of-text token do not depend on what follows it:
cutting the tokens after the longest prompt's pooling position, with the positional embedding and the mask
sliced to the same length, gives the same pooled features at a fraction of the cost. The model itself is
not changed (it loads, merges and exports as before).

A tower this module cannot shorten exactly (pooling on the last position, a mask that is not the standard
causal one, a text tower other than ``CLIP``'s own) runs through ``model.encode_text`` unchanged.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.transformer import text_global_pool
from torch import nn

# Verdicts per mask buffer (by identity, in-place changes included): checking its values costs a device
# synchronisation, once per buffer rather than once per step.
_CAUSAL_VERDICTS: dict[int, tuple[weakref.ref, int, bool]] = {}
_HOOKED_ATTRIBUTE = "complora_causal_hint"


def _is_standard_causal(mask: torch.Tensor) -> bool:
    if mask.ndim != 2 or mask.shape[0] != mask.shape[1] or not mask.is_floating_point():
        return False
    known = _CAUSAL_VERDICTS.get(id(mask))
    if known is not None and known[0]() is mask and known[1] == mask._version:
        return known[2]
    size = mask.shape[0]
    upper = torch.ones(size, size, dtype=torch.bool, device=mask.device).triu(1)
    verdict = bool(torch.equal(mask, torch.zeros_like(mask).masked_fill(upper, float("-inf"))))
    _CAUSAL_VERDICTS[id(mask)] = (weakref.ref(mask), mask._version, verdict)
    return verdict


def shortenable(model: nn.Module) -> bool:
    """Whether :func:`encode_text` runs ``model``'s text tower on a shortened context (exactly)."""
    mask = getattr(model, "attn_mask", None)
    return (
        isinstance(model, CLIP)
        and model.text_pool_type in ("argmax", "eos", "first")
        and isinstance(mask, torch.Tensor)
        and _is_standard_causal(mask)
    )


def pooled_positions(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The position each prompt's features are read from, as ``text_global_pool`` chooses it."""
    if model.text_pool_type == "argmax":
        return tokens.argmax(dim=-1)
    if model.text_pool_type == "eos":
        return (tokens == model.text_eos_id).int().argmax(dim=-1)
    return torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)


def shorten(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``tokens`` cut after the longest prompt's pooling position (all of them if the tower cannot be shortened).

    Do it once for prompts used many times (a training run's class prompts): reading the length back from the
    device is a synchronisation."""
    if not shortenable(model) or tokens.shape[0] == 0:
        return tokens
    length = int(pooled_positions(model, tokens).max()) + 1
    return tokens[:, :length]


def _causal_hint(
    owner: weakref.ref, module: nn.Module, args: tuple, kwargs: dict[str, Any]
) -> tuple[tuple, dict[str, Any]] | None:
    """Tell attention that its mask is a leading block of the tower's causal mask, which it then drops for
    SDPA's ``is_causal`` (the kernels that skip the masked half, flash attention on a GPU)."""
    model = owner()
    mask = kwargs.get("attn_mask")
    if model is None or mask is None or kwargs.get("is_causal") or kwargs.get("key_padding_mask") is not None:
        return None
    causal = model.attn_mask
    if not _is_standard_causal(causal):
        return None
    # open_clip passes the buffer itself or, from prompt_encoder, a leading square slice of it; anything else
    # (a copy made by a dtype cast, another mask) keeps the mask path.
    leading_block = mask._base is causal and mask.storage_offset() == 0 and mask.stride() == causal.stride()
    if (mask is causal or leading_block) and mask.shape[0] == mask.shape[1]:
        return args, {**kwargs, "is_causal": True}
    return None


def use_causal_kernels(model: nn.Module) -> None:
    """Hook every text-tower attention of a shortenable ``model`` (once; adapters injected later are hooked
    when this is called again) so the causal mask reaches SDPA as ``is_causal``."""
    if not shortenable(model):
        return
    # The model is read at call time (its mask buffer is replaced when it moves to another device).
    hint = functools.partial(_causal_hint, weakref.ref(model))
    for block in model.transformer.resblocks:
        attention = block.attn
        if getattr(attention, _HOOKED_ATTRIBUTE, False):
            continue
        # nn.MultiheadAttention and complora's adapter layer take is_causal, open_clip's own Attention (qk-norm
        # blocks) does not. Asked of the signature: importing the adapters here would make every change to them
        # a change of the code that encodes text (the pretraining's and feature stores' fingerprints).
        setattr(attention, _HOOKED_ATTRIBUTE, True)
        if "is_causal" in inspect.signature(type(attention).forward).parameters:
            attention.register_forward_pre_hook(hint, with_kwargs=True)


def prompt_encoder(model: nn.Module, tokens: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A function encoding ``tokens`` again and again (a training run's class prompts): shortened, checked and
    hooked once here, so each call is the forward pass alone (nothing for ``torch.compile`` to trip on but the
    hooks' identity checks)."""
    if not shortenable(model) or shorten(model, tokens).shape[1] == model.attn_mask.shape[0]:
        short = shorten(model, tokens)
        use_causal_kernels(model)
        return lambda: model.encode_text(short)
    short, encode = embedding_encoder(model, tokens)
    return lambda: encode(model.token_embedding(short))


EmbeddingEncoder = Callable[[torch.Tensor], torch.Tensor]


def embedding_encoder(model: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, EmbeddingEncoder]:
    """For prompts whose token embeddings are edited before the tower (learned context vectors): ``tokens``
    cut to the exact short context, and a function from their (R * P, L, width) embeddings, the P prompts
    repeated R times, to (R * P, D) features, as ``encode_text`` computes them from the token embeddings.

    A tower that cannot be shortened runs at its full context; a text tower other than ``CLIP``'s own is
    refused (its input is not token embeddings)."""
    if not isinstance(model, CLIP):
        raise TypeError(f"prompt learning needs open_clip's CLIP text tower, not {type(model).__name__}")
    short = shorten(model, tokens)
    use_causal_kernels(model)
    length = short.shape[1]
    # The buffer itself at full length, else a leading square slice: both keep the causal hint.
    mask = model.attn_mask if length == model.attn_mask.shape[0] else model.attn_mask[:length, :length]
    eos_token_id = getattr(model, "text_eos_id", None)

    def encode(embeddings: torch.Tensor) -> torch.Tensor:
        cast_dtype = model.transformer.get_cast_dtype()
        x = embeddings.to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
        x = model.ln_final(model.transformer(x, attn_mask=mask))
        pooled = short.repeat(x.shape[0] // short.shape[0], 1)
        x = text_global_pool(x, pooled, model.text_pool_type, eos_token_id=eos_token_id)
        if model.text_projection is None:
            return x
        return model.text_projection(x) if isinstance(model.text_projection, nn.Linear) else x @ model.text_projection

    return short, encode


def encode_text(model: nn.Module, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """``model.encode_text(tokens, normalize)`` on the shortest exact context."""
    features = prompt_encoder(model, tokens)()
    return F.normalize(features, dim=-1) if normalize else features
