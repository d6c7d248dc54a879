"""The SVD projector artifact: principal singular bases of every adapted matrix, computed once per backbone.

For each adapted matrix W = U S V^T it stores U_k and V_k up to ``k_max`` and the full spectrum S,
keyed by the hash of the pretrained weights, so a stale cache is refused instead of silently used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from tqdm import tqdm

from .adapters.config import AdapterConfig, KSpec, parse_k, resolve_k
from .adapters.sites import adapted_matrices
from .artifacts import verify_file
from .atomic import write_json
from .errors import ComploraError
from .fingerprint import tensors_sha256, weights_sha256
from .models import model_origin
from .runinfo import package_versions
from .tensorfile import save_tensors

FORMAT = "complora-projector"
FORMAT_VERSION = "1"


class ProjectorError(ComploraError):
    """A projector artifact is missing, corrupt, or does not belong to the model at hand."""


@dataclass(frozen=True)
class MatrixBasis:
    """Principal bases of one matrix: ``u`` (d_out x k_max), ``v`` (d_in x k_max), full ``spectrum``."""

    u: torch.Tensor
    v: torch.Tensor
    spectrum: torch.Tensor


@dataclass
class Projector:
    """Per-matrix principal bases of one model's weights (identified by ``weights_sha256``)."""

    bases: dict[str, MatrixBasis]
    k_max: int
    weights_sha256: str
    origin: dict[str, Any] = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in sorted(self.bases):
            basis = self.bases[name]
            out[f"{name}.U"], out[f"{name}.V"], out[f"{name}.S"] = basis.u, basis.v, basis.spectrum
        return out

    @property
    def sha256(self) -> str:
        """Hash of the stored bases: identifies this projector in adapter metadata."""
        return tensors_sha256(self.tensors().items())

    def resolve(self, name: str, k: KSpec) -> int:
        """Directions ``k`` selects for one matrix; refuses more than the artifact stores."""
        if name not in self.bases:
            raise ProjectorError(f"projector has no basis for {name}; rebuild it for this adapter config")
        resolved = resolve_k(k, self.bases[name].spectrum)
        if resolved > self.k_max:
            raise ProjectorError(
                f"k={k} selects {resolved} directions of {name} but the projector stores only "
                f"k_max={self.k_max}; rebuild it with --k-max {resolved} or more"
            )
        return resolved

    def stats(self, k_specs: list[KSpec]) -> dict[str, Any]:
        """Per matrix and per k: directions, share of squared spectrum captured, and gap s_k / s_{k+1}."""
        report = {}
        for name in sorted(self.bases):
            basis = self.bases[name]
            spectrum = basis.spectrum.double()
            energy = torch.cumsum(spectrum.square(), 0) / spectrum.square().sum()
            per_k = {}
            for spec in k_specs:
                k = resolve_k(spec, spectrum)
                gap = float(spectrum[k - 1] / spectrum[k]) if 0 < k < spectrum.numel() and spectrum[k] > 0 else None
                per_k[str(spec)] = {"k": k, "energy": float(energy[k - 1]) if k else 0.0, "gap": gap}
            report[name] = {
                "shape": [basis.u.shape[0], basis.v.shape[0]],
                "sigma_max": float(spectrum[0]),
                "per_k": per_k,
            }
        return report


def _default_report_ks(k_max: int) -> list[KSpec]:
    powers = [2**i for i in range(k_max.bit_length()) if 2**i <= k_max]
    return [*powers, *([k_max] if k_max not in powers else [])]


def build_projector(model: nn.Module, config: AdapterConfig, k_max: int | None = None) -> Projector:
    """SVD of every matrix ``config`` adapts. ``k_max`` defaults to the most directions ``config.k`` selects."""
    decompositions = {}
    matrices = list(adapted_matrices(model, config))
    for name, weight in tqdm(matrices, desc="SVD", unit="matrix", leave=False):
        # float64 keeps the bases orthonormal to ~1e-15, so projected updates are orthogonal to ~1e-7.
        u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
        decompositions[name] = (u, s, vh)
    if k_max is None:
        k_max = max(resolve_k(config.k, s) for _, s, _ in decompositions.values())
    smallest = min(s.numel() for _, s, _ in decompositions.values())
    if not 0 <= k_max <= smallest:
        raise ProjectorError(f"k_max={k_max} must lie in [0, {smallest}] (the smallest adapted matrix's rank)")
    bases = {
        name: MatrixBasis(
            u=u[:, :k_max].to(weight.dtype).contiguous(),
            v=vh[:k_max].T.to(weight.dtype).contiguous(),
            spectrum=s.float(),
        )
        for (name, weight), (u, s, vh) in zip(matrices, decompositions.values(), strict=True)
    }
    return Projector(bases=bases, k_max=k_max, weights_sha256=weights_sha256(model), origin=model_origin(model))


def stats_path(path: str | os.PathLike[str]) -> Path:
    """The JSON sidecar beside a projector file: ``X.safetensors`` -> ``X.stats.json``."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".safetensors") + ".stats.json")


def save_projector(
    projector: Projector,
    path: str | os.PathLike[str],
    report_ks: list[KSpec] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the tensors (safetensors) and the stats sidecar, each atomically; the sidecar goes last."""
    digest = projector.sha256
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "k_max": str(projector.k_max),
        "weights_sha256": projector.weights_sha256,
        "projector_sha256": digest,
        "origin": json.dumps(projector.origin, sort_keys=True),
    }
    report_ks = report_ks if report_ks is not None else _default_report_ks(projector.k_max)
    # The stats come first: a k that cannot be reported fails before anything is written.
    sidecar = {
        "format": FORMAT,
        "k_max": projector.k_max,
        "weights_sha256": projector.weights_sha256,
        "projector_sha256": digest,
        "origin": projector.origin,
        "versions": package_versions(),
        "matrices": projector.stats([parse_k(k) for k in report_ks]),
        **(extra or {}),
    }
    save_tensors(projector.tensors(), path, metadata)
    write_json(stats_path(path), sidecar)


def load_projector(path: str | os.PathLike[str]) -> Projector:
    """Read a projector file, verifying its format and that its tensors match their recorded hash."""
    path = Path(path)
    if not path.is_file():
        raise ProjectorError(f"projector file {path} does not exist; build it with `complora projector`")
    verify_file(path, what="projector")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise ProjectorError(
            f"projector file {path} is not a readable safetensors file ({error}); rebuild it"
        ) from error
    if metadata.get("format") != FORMAT:
        raise ProjectorError(f"{path} is not a complora projector (format={metadata.get('format')!r}); rebuild it")
    names = sorted({key.rsplit(".", 1)[0] for key in tensors})
    incomplete = [name for name in names if any(f"{name}.{part}" not in tensors for part in "UVS")]
    if incomplete or not {"k_max", "weights_sha256"} <= metadata.keys():
        raise ProjectorError(f"projector file {path} is incomplete (e.g. {incomplete[:1]}); rebuild it")
    projector = Projector(
        bases={name: MatrixBasis(tensors[f"{name}.U"], tensors[f"{name}.V"], tensors[f"{name}.S"]) for name in names},
        k_max=int(metadata["k_max"]),
        weights_sha256=metadata["weights_sha256"],
        origin=json.loads(metadata.get("origin", "{}")),
    )
    if projector.sha256 != metadata.get("projector_sha256"):
        raise ProjectorError(f"projector file {path} does not match its recorded hash (corrupt?); rebuild it")
    return projector
