"""The latent expert pool, the per-passage routing table, and the routed per-request adapter.

A passage's adapter is a weighted mixture of the pool's experts,

    y = W x + scale · Σ_k w_k B_k A_k x,

which :class:`~fedprag.shared.lora.layers.LoRALinear` computes as one LoRA of rank ``K·r``: the experts'
factors concatenated along the rank (shared by the whole batch) and the weights as a per-request
gate on the rank components. A batch of requests with different mixtures therefore runs in one
forward pass, with no merge into ``W`` and no adapter reload.

Why not PEFT's ``PolyModel``: its Polytropon layer mixes the factors, ``(Σ w B_k)(Σ w A_k)``,
which is not linear in the weights, so a score-weighted blend of passages' routings (or a
routing-mass weighted aggregate of experts across sites) would not be the blend of their
updates; and its router is a fixed task table, while serving needs arbitrary per-request
mixtures. The mixture of products above is linear in ``w`` and exports exactly as a plain LoRA.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fedprag.shared.lora.layers import LoRALinear, LowRank

_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


def routing_groups(module_names: list[str], mode: str) -> dict[str, int]:
    """Which routing column group each adapted module reads: 0 for all (shared) or its layer."""
    if mode == "shared":
        return {name: 0 for name in module_names}
    groups = {}
    for name in module_names:
        match = _LAYER_INDEX.search(f".{name}.")
        if match is None:
            raise ValueError(f"poly.routing: per-layer routing needs a layer index in module name '{name}'")
        groups[name] = int(match.group(1))
    return groups


def placed(layers: Mapping[str, LoRALinear], placement: str, targets: tuple[str, ...]) -> dict[str, LoRALinear]:
    """The adapted modules a pool's experts sit on: those named in ``targets``, in every layer
    (``placement`` ``"all"``) or in the last one (``"last"``)."""
    chosen = {name: layer for name, layer in layers.items() if name.rsplit(".", 1)[-1] in targets}
    if not chosen:
        raise ValueError(f"poly.targets: no adapted module is named {list(targets)}")
    if placement == "all":
        return chosen
    indices = {name: _LAYER_INDEX.search(f".{name}.") for name in chosen}
    unindexed = [name for name, match in indices.items() if match is None]
    if unindexed:
        raise ValueError(f"poly.layers: 'last' needs a layer index in module name '{unindexed[0]}'")
    last = max(int(match.group(1)) for match in indices.values())
    return {name: layer for name, layer in chosen.items() if int(indices[name].group(1)) == last}


def gumbel_sigmoid(logits: Tensor, temperature: float, generator: torch.Generator | None = None) -> Tensor:
    """A relaxed-Bernoulli sample of each logit (training-time routing)."""
    u = torch.rand(logits.shape, generator=generator).clamp(1e-6, 1 - 1e-6)
    return torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)


def normalise(weights: Tensor) -> Tensor:
    """Divide each row of expert weights by its sum, as Polytropon does."""
    return weights / weights.sum(-1, keepdim=True).clamp(min=1e-6)


def routing_weights(logits: Tensor, training: bool = False, temperature: float = 1.0,
                    generator: torch.Generator | None = None) -> Tensor:
    """Expert weights from routing logits ``[..., K]``: sampled in training, sigmoid at inference."""
    probs = gumbel_sigmoid(logits, temperature, generator) if training else torch.sigmoid(logits)
    return normalise(probs)


def keep_top_m(weights: Tensor, m: int) -> Tensor:
    """Zero all but the ``m`` largest weights of each row, then renormalise."""
    if m >= weights.shape[-1]:
        return weights
    top = weights.topk(m, dim=-1)
    return normalise(torch.zeros_like(weights).scatter(-1, top.indices, top.values))


class ExpertPool(nn.Module):
    """K latent LoRA experts per adapted module: ``A [K, r, in]`` and ``B [K, out, r]``."""

    def __init__(self, factors: Mapping[str, tuple[Tensor, Tensor]], scale: float, routing: str = "shared"):
        super().__init__()
        self.names = list(factors)
        first_a = next(iter(factors.values()))[0]
        self.n_experts, self.rank = first_a.shape[0], first_a.shape[1]
        self.scale = scale
        self.routing = routing
        self.groups = routing_groups(self.names, routing)
        self.n_groups = max(self.groups.values()) + 1
        self.A = nn.ParameterDict({self.key(n): nn.Parameter(a.clone()) for n, (a, _) in factors.items()})
        self.B = nn.ParameterDict({self.key(n): nn.Parameter(b.clone()) for n, (_, b) in factors.items()})

    @classmethod
    def initialised(cls, layers: Mapping[str, LoRALinear], n_experts: int, rank: int, scale: float,
                    routing: str = "shared", seed: int = 0) -> ExpertPool:
        """A fresh pool: every expert's A Kaiming-uniform (each its own draw), every B zero."""
        generator = torch.Generator().manual_seed(seed)
        factors = {}
        for name, layer in layers.items():
            bound = 1.0 / layer.in_features ** 0.5
            a = (torch.rand(n_experts, rank, layer.in_features, generator=generator) * 2 - 1) * bound
            factors[name] = (a, torch.zeros(n_experts, layer.out_features, rank))
        return cls(factors, scale, routing)

    def digest(self) -> str:
        """A hash of the experts' values: routing rows are only valid for the pool they were made with."""
        h = hashlib.sha256()
        for name in sorted(self.names):
            for tensor in self.factors(name):
                h.update(name.encode())
                h.update(tensor.detach().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    @staticmethod
    def key(module_name: str) -> str:
        """``ParameterDict`` keys may not contain dots."""
        return module_name.replace(".", "/")

    def factors(self, name: str) -> tuple[Tensor, Tensor]:
        """Expert factors of one module: ``A [K, r, in]``, ``B [K, out, r]``."""
        return self.A[self.key(name)], self.B[self.key(name)]

    def adapter(self, weights: Tensor) -> dict[str, LowRank]:
        """Per-request adapters from expert weights ``[b, G, K]`` (``G`` routing groups)."""
        if weights.dim() != 3 or weights.shape[1:] != (self.n_groups, self.n_experts):
            raise ValueError(f"expert weights must be [batch, {self.n_groups}, {self.n_experts}], "
                             f"got {list(weights.shape)}")
        out = {}
        for name in self.names:
            a, b = self.factors(name)
            k, r, d_in = a.shape
            cat_a = a.reshape(1, k * r, d_in)
            cat_b = b.permute(1, 0, 2).reshape(1, b.shape[1], k * r)
            gate = weights[:, self.groups[name]].repeat_interleave(r, dim=-1)
            out[name] = LowRank(cat_a, cat_b, self.scale, gate)
        return out


@dataclass
class RoutingTable:
    """Every passage's routing logits ``[P, G, K]``, addressed by passage id."""

    passage_ids: list[str]
    logits: Tensor

    def __post_init__(self) -> None:
        if len(self.passage_ids) != self.logits.shape[0]:
            raise ValueError(f"{len(self.passage_ids)} passage ids for {self.logits.shape[0]} routing rows")
        if len(set(self.passage_ids)) != len(self.passage_ids):
            raise ValueError("routing table: duplicate passage ids")
        self._position = {pid: i for i, pid in enumerate(self.passage_ids)}

    def rows(self, passage_ids: list[str]) -> list[int]:
        """Row positions of passages; an unknown id is an error, never silently skipped."""
        missing = [pid for pid in passage_ids if pid not in self._position]
        if missing:
            raise KeyError(f"no Poly-PRAG routing row for passages {missing[:5]}")
        return [self._position[pid] for pid in passage_ids]

    def weights(self, passage_ids: list[str]) -> Tensor:
        """Inference-time expert weights of the given passages: ``[n, G, K]``."""
        return routing_weights(self.logits[self.rows(passage_ids)])

    def extended(self, other: RoutingTable) -> RoutingTable:
        """This table plus ``other``'s rows; a passage id in both is an error."""
        clash = set(self.passage_ids) & set(other.passage_ids)
        if clash:
            raise ValueError(f"routing rows already exist for passages {sorted(clash)[:5]}")
        return RoutingTable(self.passage_ids + other.passage_ids, torch.cat([self.logits, other.logits]))


def combine(weights: Tensor, scores: Tensor, top_m: int, score_temperature: float) -> Tensor:
    """One request's expert weights from its top-k passages' weights ``[b, k, G, K]`` and scores ``[b, k]``.

    Passages count by softmax(score / temperature), so a clearly better match dominates; then
    only the ``top_m`` strongest experts of each group are kept.
    """
    blend = torch.softmax(scores / score_temperature, dim=-1)
    mixed = (blend[:, :, None, None] * weights).sum(1)
    return keep_top_m(mixed, top_m)


class QueryRouter(nn.Module):
    """Maps a query embedding straight to expert weights ``[G, K]``, for sites that publish no routing."""

    def __init__(self, embedding_dim: int, n_groups: int, n_experts: int, hidden: int = 256):
        super().__init__()
        self.n_groups = n_groups
        self.n_experts = n_experts
        self.net = nn.Sequential(nn.Linear(embedding_dim, hidden), nn.GELU(), nn.Linear(hidden, n_groups * n_experts))

    def forward(self, embeddings: Tensor) -> Tensor:
        """Routing logits ``[b, G, K]``."""
        return self.net(embeddings).view(-1, self.n_groups, self.n_experts)
