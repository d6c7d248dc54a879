"""The adapter layer: ``nn.MultiheadAttention`` with LoRA / Comp-LoRA updates on its projections.

For a target map with pretrained weight W the layer computes

    LoRA:      h = W x + gamma * B A dropout(x)
    Comp-LoRA: h = W x + gamma * (P_out B)(A P_in) dropout(x),  P_out = I - U U^T,  P_in = I - V V^T

where U, V hold the top-k singular vectors of W. The projected factors are formed as
A - (A V) V^T and B - U (U^T B), never as d x d matrices, so Comp-LoRA costs O(r d k) more than LoRA
per step. The fused q/k/v projection stays one matmul: the low-rank terms of all targeted thirds are
added to it through one (3d x n r) block matrix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import AdapterConfig
from .sites import QKV_INDEX, matrix_weight


class LoraDropout(nn.Dropout):
    """``nn.Dropout`` of the low-rank branch. On the CPU its mask comes from one uniform draw and a comparison:
    the same distribution at half the cost of torch's CPU dropout (its Bernoulli sampling was a sixth of a demo step);
    elsewhere torch's fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        keep = torch.rand_like(x) >= self.p
        return x * keep.to(x.dtype).mul_(1 / (1 - self.p))


class LoraMultiheadAttention(nn.Module):
    """Wraps an ``nn.MultiheadAttention`` (kept frozen as ``base_layer``) with low-rank updates.

    Reproduces ``nn.MultiheadAttention.forward`` (masks, key padding, batch_first, attention dropout)
    for ``need_weights=False``, which is how open_clip calls it.
    """

    def __init__(self, base_layer: nn.MultiheadAttention, config: AdapterConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.targets = config.targets
        self.rank = config.rank
        self.scale = config.scale
        self.lora_dropout = LoraDropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.projected_sides: dict[str, tuple[bool, bool]] = {}
        self._weights_before_merge: dict[str, torch.Tensor] | None = None
        for target in self.targets:
            weight = matrix_weight(base_layer, target)
            d_out, d_in = weight.shape
            factory = {"device": weight.device, "dtype": weight.dtype}
            a = nn.Parameter(torch.empty(config.rank, d_in, **factory))
            # Kaiming-uniform A and zero B, as in CLIP-LoRA and PEFT: the update starts at exactly zero.
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.lora_A[target] = a
            self.lora_B[target] = nn.Parameter(torch.zeros(d_out, config.rank, **factory))

    # ---- Comp-LoRA projection -------------------------------------------------------------------

    def set_projection(self, target: str, u: torch.Tensor | None, v: torch.Tensor | None) -> None:
        """Protect the column space of ``u`` (output side) and of ``v`` (input side) of one target map.

        ``u`` is (d_out x k) and ``v`` is (d_in x k) with orthonormal columns; ``None`` leaves a side free.
        """
        weight = matrix_weight(self.base_layer, target)
        for side, basis, dim in (("U", u, weight.shape[0]), ("V", v, weight.shape[1])):
            if basis is not None and (basis.ndim != 2 or basis.shape[0] != dim):
                raise ValueError(f"{side} basis for target {target} has shape {tuple(basis.shape)}, need ({dim}, k)")
            # Bases stay at least float32 so the projection stays orthogonal on half-precision models.
            dtype = torch.promote_types(weight.dtype, torch.float32)
            tensor = None if basis is None else basis.to(device=weight.device, dtype=dtype).contiguous()
            # Non-persistent: the bases come from the projector artifact, not from adapter checkpoints.
            self.register_buffer(f"proj_{side}_{target}", tensor, persistent=False)
        self.projected_sides[target] = (u is not None, v is not None)

    def factors(self, target: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The effective (B, A) of one target: projected for Comp-LoRA, the raw parameters for LoRA."""
        a, b = self.lora_A[target], self.lora_B[target]
        project_out, project_in = self.projected_sides.get(target, (False, False))
        if not (project_in or project_out):
            return b, a
        # Autocast would run these O(r d k) products in half precision and break the orthogonality.
        with torch.autocast(a.device.type, enabled=False):
            if project_in:
                v = getattr(self, f"proj_V_{target}")
                a = (a.to(v.dtype) - (a.to(v.dtype) @ v) @ v.T).to(a.dtype)
            if project_out:
                u = getattr(self, f"proj_U_{target}")
                b = (b.to(u.dtype) - u @ (u.T @ b.to(u.dtype))).to(b.dtype)
        return b, a

    def delta_weight(self, target: str) -> torch.Tensor:
        """The dense update gamma * B_eff A_eff of one target map (for merging and checks, not forward)."""
        b, a = self.factors(target)
        with torch.autocast(a.device.type, enabled=False):
            return self.scale * (b @ a)

    # ---- merge / unmerge ------------------------------------------------------------------------

    @property
    def merged(self) -> bool:
        return self._weights_before_merge is not None

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the updates into the base weights; the pre-merge weights are kept so unmerge is exact."""
        if self.merged:
            return
        base = self.base_layer
        self._weights_before_merge = {
            "in_proj_weight": base.in_proj_weight.detach().clone(),
            "out_proj.weight": base.out_proj.weight.detach().clone(),
        }
        for target in self.targets:
            matrix_weight(base, target).add_(self.delta_weight(target))

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        self.base_layer.in_proj_weight.copy_(self._weights_before_merge["in_proj_weight"])
        self.base_layer.out_proj.weight.copy_(self._weights_before_merge["out_proj.weight"])
        self._weights_before_merge = None

    # ---- forward --------------------------------------------------------------------------------

    def _qkv_lora(self, x: torch.Tensor, targets: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-rank codes z_t = A_t dropout_t(x) for ``targets`` and the block matrix lifting them to q|k|v."""
        blocks_b, blocks_a = zip(*(self.factors(t) for t in targets), strict=True)
        # Each target draws its own dropout mask, as separate LoRA-wrapped projections do in CLIP-LoRA.
        z = torch.cat([F.linear(self.lora_dropout(x), a) for a in blocks_a], dim=-1)
        width, n = self.rank * len(targets), len(targets)
        rows = []
        for name in QKV_INDEX:
            if name in targets:
                position = targets.index(name)
                rows.append(F.pad(blocks_b[position], (position * self.rank, (n - 1 - position) * self.rank)))
            else:
                rows.append(blocks_b[0].new_zeros(self.base_layer.embed_dim, width))
        return z, torch.cat(rows)

    def _project_in(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, adapt: bool):
        base = self.base_layer
        weight, bias = base.in_proj_weight, base.in_proj_bias
        qkv_targets = [t for t in QKV_INDEX if adapt and t in self.targets]
        if query is key and key is value:
            flat = query.reshape(-1, query.shape[-1])
            out = F.linear(flat, weight, bias)
            if qkv_targets:
                z, lift = self._qkv_lora(flat, qkv_targets)
                out = torch.addmm(out, z, lift.T, alpha=self.scale)
            return out.view(*query.shape[:-1], -1).chunk(3, dim=-1)
        size = base.embed_dim
        projected = []
        for name, x in zip(QKV_INDEX, (query, key, value), strict=True):
            rows = slice(QKV_INDEX[name] * size, (QKV_INDEX[name] + 1) * size)
            h = F.linear(x, weight[rows], None if bias is None else bias[rows])
            if name in qkv_targets:
                b, a = self.factors(name)
                h = h + self.scale * F.linear(F.linear(self.lora_dropout(x), a), b)
            projected.append(h)
        return tuple(projected)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise NotImplementedError(
                "adapted attention does not return attention weights; call it with need_weights=False"
            )
        if self.merged and self.training:
            raise RuntimeError("adapters are merged into the base weights; call unmerge(model) before training")
        base = self.base_layer
        adapt = not self.merged
        if not base.batch_first:
            self_attention = query is key and key is value
            query = query.transpose(0, 1)
            key, value = (query, query) if self_attention else (key.transpose(0, 1), value.transpose(0, 1))
        q, k, v = self._project_in(query, key, value, adapt)

        batch, tgt_len, embed = q.shape
        src_len, heads = k.shape[1], base.num_heads
        q, k, v = (t.reshape(batch, -1, heads, embed // heads).transpose(1, 2) for t in (q, k, v))
        mask, causal = self._attention_mask(attn_mask, key_padding_mask, is_causal, q.dtype, batch, src_len)
        dropout = base.dropout if self.training else 0.0
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
        attn = attn.transpose(1, 2).reshape(batch, tgt_len, embed)

        out = F.linear(attn, base.out_proj.weight, base.out_proj.bias)
        if adapt and "o" in self.targets:
            b, a = self.factors("o")
            out = out + self.scale * F.linear(F.linear(self.lora_dropout(attn), a), b)
        if not base.batch_first:
            out = out.transpose(0, 1)
        return out, None

    def _attention_mask(
        self,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        is_causal: bool,
        dtype: torch.dtype,
        batch: int,
        src_len: int,
    ) -> tuple[torch.Tensor | None, bool]:
        """Combine masks exactly as ``F.multi_head_attention_forward`` does before its SDPA call."""
        heads = self.base_layer.num_heads
        if is_causal and attn_mask is None:
            raise RuntimeError("is_causal=True needs attn_mask as well, as in nn.MultiheadAttention")
        if is_causal and key_padding_mask is None:
            return None, True
        if attn_mask is not None:
            attn_mask = F._canonical_mask(attn_mask, "attn_mask", None, "", dtype, check_other=False)
            if attn_mask.dim() == 2:
                attn_mask = attn_mask.unsqueeze(0)
        if key_padding_mask is not None:
            padding = F._canonical_mask(key_padding_mask, "key_padding_mask", None, "", dtype, check_other=False)
            padding = padding.view(batch, 1, 1, src_len).expand(-1, heads, -1, -1).reshape(batch * heads, 1, src_len)
            attn_mask = padding if attn_mask is None else attn_mask + padding
        if attn_mask is None:
            return None, False
        if attn_mask.size(0) == 1:
            return attn_mask.unsqueeze(0), False
        return attn_mask.view(batch, heads, -1, src_len), False
