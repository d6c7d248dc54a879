"""Adapter configuration: what to adapt, how, and how much of each pretrained subspace to protect."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch

from complora.errors import ComploraError

METHODS = ("lora", "complora")
SCALINGS = ("sqrt", "linear")
TARGETS = ("q", "k", "v", "o")
TOWERS = ("vision", "text")
SIDES = ("both", "input", "output")

KSpec = int | float | str


class AdapterConfigError(ComploraError, ValueError):
    """A field of an adapter configuration has a value that cannot be used."""


def parse_k(value: Any) -> KSpec:
    """Normalise a Comp-LoRA ``k`` given as int, float, or text (from YAML or a command line).

    Accepted: an int >= 0 (number of directions), a float in (0, 1) (fraction of the dimension),
    or ``"energy:<x>"`` with x in (0, 1] (smallest k whose singular values hold that share of the
    squared spectrum).
    """
    if isinstance(value, bool):
        raise AdapterConfigError(f"k: expected an int, a float in (0, 1) or 'energy:<x>', got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("energy:"):
            try:
                share = float(text.split(":", 1)[1])
            except ValueError:
                share = math.nan
            if not 0.0 < share <= 1.0:
                raise AdapterConfigError(f"k: 'energy:<x>' needs x in (0, 1], got {value!r}")
            return f"energy:{share:g}"
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise AdapterConfigError(
                    f"k: expected an int, a float in (0, 1) or 'energy:<x>', got {value!r}"
                ) from None
    if isinstance(value, int):
        if value < 0:
            raise AdapterConfigError(f"k: a number of directions must be >= 0, got {value}")
        return value
    if isinstance(value, float):
        if value.is_integer() and value >= 1:
            return int(value)
        if not 0.0 < value < 1.0:
            raise AdapterConfigError(f"k: a fraction of the dimension must lie in (0, 1), got {value}")
        return value
    raise AdapterConfigError(f"k: expected an int, a float in (0, 1) or 'energy:<x>', got {value!r}")


def resolve_k(k: KSpec, spectrum: torch.Tensor) -> int:
    """Number of principal directions that ``k`` selects for a matrix with this singular spectrum."""
    dim = spectrum.numel()
    if isinstance(k, str):
        share = float(k.split(":", 1)[1])
        energy = spectrum.double().square()
        captured = torch.cumsum(energy, 0) / energy.sum()
        # The tolerance keeps energy:1 from asking for one more direction than exists through rounding.
        return min(int(torch.searchsorted(captured, torch.tensor(share - 1e-12, dtype=captured.dtype))) + 1, dim)
    if isinstance(k, float):
        return round(k * dim)
    if k > dim:
        raise AdapterConfigError(f"k: {k} directions asked for a matrix of rank at most {dim}")
    return k


def _as_choice_list(name: str, value: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else tuple(value)
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise AdapterConfigError(f"{name}: {list(items)} is not a non-empty subset of {list(allowed)}")
    # Canonical order so that equal configs compare and hash equal.
    return tuple(item for item in allowed if item in items)


@dataclass(frozen=True)
class AdapterConfig:
    """How to adapt an open_clip model. Defaults are CLIP-LoRA's (docs/design.md, "LoRA and Comp-LoRA").

    method: ``lora`` or ``complora``. rank, alpha: LoRA rank r and alpha. scaling: ``sqrt`` for
    alpha/sqrt(r) (CLIP-LoRA) or ``linear`` for alpha/r. dropout: applied to the LoRA input only.
    targets: subset of q, k, v (the thirds of the fused input projection) and o (output projection).
    towers: ``vision`` and/or ``text``. layers: ``"all"`` or block indices (negative counts from the end).
    k, side: Comp-LoRA's protected principal subspace (see :func:`parse_k`) and which side of each
    matrix is projected (``both``, ``input`` or ``output``); ignored by ``lora``.
    """

    method: Literal["lora", "complora"] = "lora"
    rank: int = 2
    alpha: float = 1.0
    scaling: Literal["sqrt", "linear"] = "sqrt"
    dropout: float = 0.25
    targets: tuple[str, ...] = ("q", "k", "v")
    towers: tuple[str, ...] = ("vision", "text")
    layers: str | tuple[int, ...] = "all"
    k: KSpec = 32
    side: Literal["both", "input", "output"] = "both"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise AdapterConfigError(f"method: {self.method!r} is not one of {list(METHODS)}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise AdapterConfigError(f"rank: expected an int >= 1, got {self.rank!r}")
        if not isinstance(self.alpha, int | float) or isinstance(self.alpha, bool) or self.alpha <= 0:
            raise AdapterConfigError(f"alpha: expected a number > 0, got {self.alpha!r}")
        if self.scaling not in SCALINGS:
            raise AdapterConfigError(f"scaling: {self.scaling!r} is not one of {list(SCALINGS)}")
        if not isinstance(self.dropout, int | float) or not 0.0 <= self.dropout < 1.0:
            raise AdapterConfigError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        if self.side not in SIDES:
            raise AdapterConfigError(f"side: {self.side!r} is not one of {list(SIDES)}")
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "dropout", float(self.dropout))
        object.__setattr__(self, "targets", _as_choice_list("targets", self.targets, TARGETS))
        object.__setattr__(self, "towers", _as_choice_list("towers", self.towers, TOWERS))
        object.__setattr__(self, "layers", self._parse_layers(self.layers))
        object.__setattr__(self, "k", parse_k(self.k))

    @staticmethod
    def _parse_layers(layers: Any) -> str | tuple[int, ...]:
        if layers == "all":
            return "all"
        if isinstance(layers, int | str):
            layers = [layers]
        try:
            parsed = tuple(int(index) for index in layers)
        except (TypeError, ValueError):
            raise AdapterConfigError(f"layers: expected 'all' or a list of block indices, got {layers!r}") from None
        if not parsed:
            raise AdapterConfigError("layers: the list of block indices is empty; use 'all' or name blocks")
        return tuple(sorted(set(parsed)))

    @property
    def scale(self) -> float:
        """The factor gamma in front of the low-rank update."""
        root = math.sqrt(self.rank) if self.scaling == "sqrt" else self.rank
        return self.alpha / root

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AdapterConfigError(f"unknown adapter config fields {unknown}; known fields are {sorted(known)}")
        return cls(**data)

    def differences(self, other: AdapterConfig) -> list[str]:
        """Human-readable list of fields whose values differ, as ``field: mine != theirs``."""
        mine, theirs = asdict(self), asdict(other)
        if self.method == other.method == "lora":
            for ignored in ("k", "side"):
                mine.pop(ignored), theirs.pop(ignored)
        return [f"{name}: {mine[name]!r} != {theirs[name]!r}" for name in mine if mine[name] != theirs[name]]
