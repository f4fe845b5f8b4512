"""LoRA on a frozen base model, with a different low-rank update for every row of a batch.

Every encoding method ends in the same place: for each request, some low-rank factors per adapted
module. PRAG concatenates the top-k passages' LoRAs, Poly-PRAG mixes a shared expert pool, and
DistilledPRAG generates factors from documents. :class:`LoRALinear` applies them all the same way,

    y = W x + scale · B_b (g_b ⊙ A_b x)

where ``A_b`` is ``[r, in]``, ``B_b`` is ``[out, r]`` and the optional gate ``g_b`` weights the
``r`` rank components per request. The factors carry a batch dimension (or 1, to share one update
across the batch), so requests with different adapters run in one forward pass with no merge into
``W`` and no adapter reload.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fedprag.shared.lora.targets import FFN_TARGETS


@dataclass(frozen=True)
class LowRank:
    """Low-rank factors for one module: ``A [b|1, r, in]``, ``B [b|1, out, r]``, ``gate [b|1, r]``."""

    A: Tensor
    B: Tensor
    scale: float
    gate: Tensor | None = None


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus whichever per-request low-rank update is currently set."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.factors: tuple[Tensor, Tensor, Tensor | None] | None = None
        """The current update as ``(Aᵀ [b, in, r] or [in, r], Bᵀ [b, r, out] or [r, out],
        gate [b, 1, r] or None)``; see :func:`_folded`."""

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)
        if self.factors is None:
            return y
        a_t, b_t, gate = self.factors
        h = x @ a_t
        return y + (h if gate is None else h * gate) @ b_t


def _folded(delta: LowRank) -> tuple[Tensor, Tensor, Tensor | None]:
    """``delta`` as what :class:`LoRALinear` multiplies by, prepared once per :func:`applied` block
    rather than once per forward (per decode step): the scale folded into ``B``, and the gate too
    when ``B`` is per request already. With a ``B`` shared by the batch the gate stays a gate on
    the rank activations, so a batch of mixtures never holds a copy of ``B`` per request; and a
    factor shared by the batch is a plain matrix, so it costs one matrix product, not one per row."""
    def shared(factor: Tensor) -> Tensor:
        return factor[0] if factor.shape[0] == 1 else factor

    a_t = shared(delta.A.transpose(-1, -2))
    if delta.gate is None:
        return a_t, shared((delta.B * delta.scale).transpose(-1, -2)), None
    if delta.B.shape[0] == 1:
        return a_t, (delta.B[0] * delta.scale).T, delta.gate.unsqueeze(1)
    return a_t, (delta.B * (delta.scale * delta.gate).unsqueeze(1)).transpose(-1, -2), None


Adapter = Mapping[str, LowRank]
"""Factors for every adapted module, keyed by the module's name in the base model."""


def attach_lora(model: nn.Module, targets: tuple[str, ...] = FFN_TARGETS) -> dict[str, LoRALinear]:
    """Wrap every ``nn.Linear`` whose attribute name is in ``targets``; freeze the base model.

    Idempotent: calling it again returns the layers already attached.
    """
    for param in model.parameters():
        param.requires_grad_(False)
    layers: dict[str, LoRALinear] = {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name not in targets:
                continue
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear):
                child = LoRALinear(child)
                setattr(module, child_name, child)
            if isinstance(child, LoRALinear):
                layers[full] = child
    if not layers:
        raise ValueError(f"no nn.Linear modules named {targets} in {type(model).__name__}")
    return layers


@contextlib.contextmanager
def applied(layers: Mapping[str, LoRALinear], adapter: Adapter | None) -> Iterator[None]:
    """Set ``adapter`` on the layers for the duration of the block (``None`` means the bare model)."""
    if adapter is not None:
        unknown = set(adapter) - set(layers)
        if unknown:
            raise KeyError(f"adapter names modules the model does not adapt: {sorted(unknown)[:3]}")
    try:
        for name, layer in layers.items():
            delta = None if adapter is None else adapter.get(name)
            layer.factors = None if delta is None else _folded(delta)
        yield
    finally:
        for layer in layers.values():
            layer.factors = None


@contextlib.contextmanager
@torch.no_grad()
def merged(layers: Mapping[str, LoRALinear], adapter: Adapter) -> Iterator[None]:
    """Fold a single request's adapter into the base weights for the block, then restore them.

    This is the one-request-at-a-time serving path (PEFT's merge/unmerge): every request with a
    different adapter pays a merge of ``ΔW = scale · B (g ⊙ A)`` into every adapted ``W``.
    """
    originals = {}
    try:
        for name, delta in adapter.items():
            if delta.A.shape[0] != 1:
                raise ValueError("merged() takes one request's adapter; batch rows need applied()")
            a = delta.A[0] if delta.gate is None else delta.A[0] * delta.gate[0, :, None]
            weight = layers[name].base.weight
            originals[name] = weight.detach().clone()
            weight.add_(delta.scale * delta.B[0] @ a)
        yield
    finally:
        for name, weight in originals.items():
            layers[name].base.weight.copy_(weight)


def init_factors(layers: Mapping[str, LoRALinear], count: int, rank: int, seed: int) -> dict[str, tuple[Tensor, Tensor]]:
    """``count`` copies of one shared LoRA initialisation: A Kaiming-uniform, B zero (so Δ=0)."""
    generator = torch.Generator().manual_seed(seed)
    factors = {}
    for name, layer in layers.items():
        bound = 1.0 / layer.in_features ** 0.5
        a = (torch.rand(rank, layer.in_features, generator=generator) * 2 - 1) * bound
        factors[name] = (a.expand(count, -1, -1).clone(), torch.zeros(count, layer.out_features, rank))
    return factors
