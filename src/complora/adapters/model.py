"""Model-level adapter operations: inject, merge and unmerge, and the adapter state a model carries."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

from complora import subspace
from complora.errors import ComploraError
from complora.fingerprint import weights_sha256

from .config import AdapterConfig
from .layer import LoraMultiheadAttention
from .sites import check_supported_attention, find_attention_sites

_STATE_ATTRIBUTE = "complora_adapter"


@dataclass(frozen=True)
class AdapterState:
    """What :func:`inject` did to a model: its config, the adapted matrix names, the projector file used
    (None when none was supplied) and the directions protected per matrix."""

    config: AdapterConfig
    matrices: tuple[str, ...]
    projector_sha256: str | None
    directions: dict[str, int]


def has_adapters(model: nn.Module) -> bool:
    return getattr(model, _STATE_ATTRIBUTE, None) is not None


def adapter_state(model: nn.Module) -> AdapterState:
    state = getattr(model, _STATE_ATTRIBUTE, None)
    if state is None:
        raise ComploraError("this model carries no adapters; call complora.adapters.inject(model, config) first")
    return state


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, LoraMultiheadAttention]]:
    for name, module in model.named_modules():
        if isinstance(module, LoraMultiheadAttention):
            yield name, module


def _projection_for(model: nn.Module, config: AdapterConfig, projector: subspace.Projector | None):
    if config.method != "complora":
        return None
    if projector is None:
        return subspace.build_projector(model, config)
    model_hash = weights_sha256(model)
    if projector.weights_sha256 != model_hash:
        raise subspace.ProjectorError(
            f"stale projector: it was built from weights {projector.weights_sha256[:16]}… "
            f"({projector.origin.get('model', '?')}/{projector.origin.get('pretrained', '?')}) but this model's "
            f"weights hash to {model_hash[:16]}…; rebuild it with `complora projector` for this model"
        )
    return projector


def inject(model: nn.Module, config: AdapterConfig, projector: subspace.Projector | None = None) -> list[str]:
    """Wrap the attention ``config`` selects with adapters, in place, and freeze everything else.

    For ``complora`` the principal bases come from ``projector`` (refused if built from other weights)
    or, when it is None, from an SVD computed now. A is drawn from torch's global generator (seed it
    for reproducible runs); B starts at zero. Returns the adapted matrix names.
    """
    if has_adapters(model) or any(True for _ in adapter_layers(model)):
        raise ComploraError("this model already carries adapters; inject into a fresh model")
    sites = find_attention_sites(model, config)
    for site in sites:
        check_supported_attention(site.name, site.module)
    supplied = projector is not None and config.method == "complora"
    projector = _projection_for(model, config, projector)

    # Every layer is built (and every k resolved) before the model is touched: a failure leaves it as it was.
    names, directions, layers = [], {}, []
    for site in sites:
        # A new module starts in training mode; follow the wrapped one so an eval model stays in eval.
        layer = LoraMultiheadAttention(site.module, config).train(site.module.training)
        for target in config.targets:
            name = f"{site.name}.{target}"
            names.append(name)
            if projector is not None:
                k = projector.resolve(name, config.k)
                basis = projector.bases[name]
                layer.set_projection(
                    target,
                    basis.u[:, :k] if config.side in ("both", "output") else None,
                    basis.v[:, :k] if config.side in ("both", "input") else None,
                )
                directions[name] = k
        layers.append(layer)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for site, layer in zip(sites, layers, strict=True):
        site.parent.attn = layer
    state = AdapterState(
        config=config,
        matrices=tuple(names),
        # A projector computed on the spot is identified by the base weights and the directions alone:
        # its bytes may differ across LAPACK builds and devices without changing the subspaces.
        projector_sha256=projector.sha256 if supplied else None,
        directions=directions,
    )
    setattr(model, _STATE_ATTRIBUTE, state)
    return names


def merge(model: nn.Module) -> None:
    """Fold every adapter update into its base weights (for evaluation: inference then costs nothing extra)."""
    adapter_state(model)
    for _, layer in adapter_layers(model):
        layer.merge()


def unmerge(model: nn.Module) -> None:
    """Restore the exact pre-merge base weights and re-enable the adapter path."""
    adapter_state(model)
    for _, layer in adapter_layers(model):
        layer.unmerge()


def is_merged(model: nn.Module) -> bool:
    return any(layer.merged for _, layer in adapter_layers(model))


@contextmanager
def unmerged(model: nn.Module) -> Iterator[None]:
    """Temporarily unmerge (so the base weights are the pretrained ones), restoring the merge state after."""
    merged_layers = [layer for _, layer in adapter_layers(model) if layer.merged]
    for layer in merged_layers:
        layer.unmerge()
    try:
        yield
    finally:
        for layer in merged_layers:
            layer.merge()


def trainable_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
