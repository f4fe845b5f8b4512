"""The mask token and the parameter generator of DistilledPRAG.

The student sees the standard-RAG prompt with every document token replaced by ``<|doc_mask|>``.
That token is added to the tokenizer only; its embedding is one frozen vector drawn from the
vocabulary embeddings' per-dimension mean and standard deviation. :func:`install_mask_embedding`
hooks the base model's input embedding so that the token's id maps to that vector; the base
model's weights are never resized or changed, and inputs without the token are untouched, so
every other method sharing the base model is unaffected.

:class:`Generator` reads each document token as two frozen base-model states, its input embedding
and its last hidden state, and emits LoRA factors for every adapted module:

    per-layer slot queries ─ cross-attention over document tokens ─ Transformer ─ one head per
    target module type → A [r, in] and B [out, r], with B scaled by a learnable sigmoid gate.

Several documents (the concatenated top-k) give one LoRA; there is no merge step. The output is an
ordinary batched :data:`fedprag.shared.lora.layers.Adapter`, so batched inference is the same one-forward
path Poly-PRAG uses.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedprag.shared.lora.layers import Adapter, LoRALinear, LowRank
from fedprag.shared.methods.distilled.config import DistilledConfig

MASK_TOKEN = "<|doc_mask|>"
_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def add_mask_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """Add ``<|doc_mask|>`` to the tokenizer (idempotent); returns its id."""
    if MASK_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([MASK_TOKEN], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(MASK_TOKEN)


def draw_mask_vector(model: PreTrainedModel, seed: int) -> Tensor:
    """One embedding drawn from the vocabulary embeddings' per-dimension mean and std."""
    weight = model.get_input_embeddings().weight.detach()
    generator = torch.Generator().manual_seed(seed)
    return weight.mean(0) + weight.std(0) * torch.randn(weight.shape[1], generator=generator)


def install_mask_embedding(model: PreTrainedModel, mask_id: int, mask_vector: Tensor) -> None:
    """Make the input embedding map ``mask_id`` to ``mask_vector`` (idempotent; frozen vector).

    A pre-hook swaps the id for 0 before the lookup (the embedding table has no row for it), and
    a hook puts the vector at those positions afterwards. Installing another vector for the same
    id is refused: two generators that disagree on it cannot share one base model.
    """
    embedding = model.get_input_embeddings()
    if getattr(embedding, "_fedprag_mask_id", None) == mask_id:
        if not torch.equal(embedding._fedprag_mask_vector, mask_vector.detach().to(embedding._fedprag_mask_vector.dtype)):
            raise ValueError("this base model already has another mask vector installed")
        return
    if mask_id < embedding.num_embeddings:
        raise ValueError(f"mask token id {mask_id} already has a row in the embedding table")
    vector = mask_vector.detach().clone()
    positions: list[Tensor] = []

    def swap_ids(module: nn.Module, args: tuple) -> tuple:
        ids = args[0]
        positions.append(ids == mask_id)
        return (ids.masked_fill(positions[-1], 0), *args[1:])

    def place_vector(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        is_mask = positions.pop()
        if not is_mask.any():
            return output
        return torch.where(is_mask.unsqueeze(-1), vector.to(output.dtype), output)

    embedding.register_forward_pre_hook(swap_ids)
    embedding.register_forward_hook(place_vector)
    embedding._fedprag_mask_id = mask_id
    embedding._fedprag_mask_vector = vector


def layer_plan(layers: dict[str, LoRALinear], targets: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """``(module name, layer index, target index)`` for every adapted module, in a fixed order."""
    plan = []
    for name in sorted(layers, key=lambda n: (int(_LAYER_INDEX.search(n).group(1)), n)):
        match = _LAYER_INDEX.search(name)
        kind = name.rsplit(".", 1)[-1]
        if match is None or kind not in targets:
            raise ValueError(f"cannot place module {name} in the generator's layer plan")
        plan.append((name, int(match.group(1)), targets.index(kind)))
    return plan


class Generator(nn.Module):
    """Documents (token states) → LoRA factors for every adapted module of the base model.

    Each adapted layer has ``rank`` learnable queries, one *slot* per rank component. The slots
    cross-attend over the document tokens, a small Transformer lets them coordinate, and a head per
    target module type turns slot ``j`` of a layer into row ``j`` of that module's A and column
    ``j`` of its B.

    Modules that write into the residual stream (``out_features`` equal to the model's width, as
    ``down_proj``) also get a *copy path*. Each slot points at document tokens and adds their
    input embeddings to its B column, so the LoRA can put a fact's answer token back at the answer
    position, keyed by what A detects in the question. That is the shape of update that works
    here: a hand-built rank-5 update on the last ``down_proj``, with attribute keys in A and the
    answer tokens' embeddings in B, answers 0.97 of masked-prompt questions on the built-in model.
    Without the path, and from heads initialised at zero, a generator never learned it and
    collapsed to one LoRA for every document (README, DistilledPRAG).
    """

    def __init__(self, layers: dict[str, LoRALinear], hidden_size: int, config: DistilledConfig):
        super().__init__()
        self.config = config
        self.hidden_size = hidden_size
        self.plan = layer_plan(layers, config.targets)
        n_layers = 1 + max(layer for _, layer, _ in self.plan)
        shapes = {}
        for name, _, target in self.plan:
            shapes.setdefault(target, (layers[name].in_features, layers[name].out_features))
        self.shapes = shapes
        self.copies = frozenset(t for t, (_, d_out) in shapes.items() if d_out == hidden_size)
        width, rank = config.width, config.rank
        self.read = nn.Sequential(nn.Linear(2 * hidden_size, width), nn.LayerNorm(width))
        self.queries = nn.Parameter(torch.randn(n_layers * rank, width) * 0.02)
        self.cross = nn.MultiheadAttention(width, config.heads, batch_first=True)
        block = nn.TransformerEncoderLayer(width, config.heads, dim_feedforward=2 * width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.mixer = nn.TransformerEncoder(block, config.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head_a = nn.ModuleList(nn.Linear(width, shapes[t][0]) for t in range(len(config.targets)))
        self.head_b = nn.ModuleList(nn.Linear(width, shapes[t][1]) for t in range(len(config.targets)))
        for head in self.head_b:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.point_query = nn.Linear(width, width)
        self.point_key = nn.Linear(width, width)
        self.copy_scale = nn.Parameter(torch.ones(n_layers))
        self.gate = nn.Parameter(torch.zeros(n_layers, len(config.targets)))

    def forward(self, doc_states: Tensor, doc_mask: Tensor) -> Adapter:
        """``doc_states [b, t, 2·hidden]`` (input embedding ‖ last hidden state per token) with
        ``doc_mask [b, t]`` (1 = real token) → one adapter per row."""
        keys = self.read(doc_states)
        padding = doc_mask == 0
        queries = self.queries.unsqueeze(0).expand(keys.shape[0], -1, -1)
        read, _ = self.cross(queries, keys, keys, key_padding_mask=padding, need_weights=False)
        slots = self.norm(self.mixer(queries + read))  # [b, layers·rank, width]
        pointing = self.point_query(slots) @ self.point_key(keys).transpose(1, 2) / keys.shape[-1] ** 0.5
        pointing = pointing.masked_fill(padding.unsqueeze(1), float("-inf")).softmax(-1)
        copied = pointing @ doc_states[..., :self.hidden_size]  # each slot's pick of input embeddings
        rank, adapter = self.config.rank, {}
        for name, layer, target in self.plan:
            d_in = self.shapes[target][0]
            own = slice(layer * rank, (layer + 1) * rank)
            a = self.head_a[target](slots[:, own]) / d_in ** 0.5  # [b, r, in]
            b = self.head_b[target](slots[:, own])  # [b, r, out]
            if target in self.copies:
                b = b + self.copy_scale[layer] * copied[:, own]
            adapter[name] = LowRank(A=a, B=b.transpose(1, 2) * torch.sigmoid(self.gate[layer, target]),
                                    scale=self.config.scale)
        return adapter


@torch.no_grad()
def document_spread(adapter: Adapter) -> dict[str, float]:
    """How much generated LoRAs differ across the batch's documents, per adapted module: the
    root-mean-square distance of each row's ``ΔW = scale·B·A`` from the batch mean, relative to the
    mean's norm.

    Near 0 in every module means the generator ignores its documents, the known failure of
    hypernetwork translators (docs/design.md §2.3). A working generator may still make some modules
    document-independent (here ``gate_proj`` and ``up_proj``, around 0.03, while ``down_proj``
    carries the facts at 0.7–0.9), so look at the largest. Needs at least two different documents.
    """
    spreads = {}
    for name, delta in adapter.items():
        if delta.A.shape[0] < 2:
            raise ValueError("document_spread: needs adapters for at least two documents")
        dw = torch.einsum("bor,bri->boi", delta.B, delta.A) * delta.scale
        mean = dw.mean(0, keepdim=True)
        rms = (dw - mean).pow(2).sum((1, 2)).mean().sqrt()
        spreads[name] = float(rms / mean.norm().clamp_min(1e-12))
    return spreads


# -- what a site does to its factors before they leave it (attacks: fedprag.shared.eval.leakage) --
DEFAULT_NOISE = 0.0
"""The noise :func:`protect` adds by default, relative to each column's norm: none. On the built-in model, over four runs, noise 1 cost 0.003 to 0.036
single-hop exact match and left the mixture attack's recovery where it was (43–46% of a lone
passage's facts); noise 3 cut that to 24–29% and cost 0.30 to 0.34 of DistilledPRAG's 0.547
(benchmarks/results/distilled_leakage.md)."""


def folded_factors(delta: LowRank) -> tuple[Tensor, Tensor]:
    """``(A, B)`` of a batch of factors with any rank gate folded into ``B``: the same ``ΔW``."""
    return delta.A, delta.B if delta.gate is None else delta.B * delta.gate.unsqueeze(1)


def _fresh_generator() -> torch.Generator:
    """A generator seeded from ``os.urandom``: protection noise no one can replay."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))


def _keyed_generator(key: bytes) -> torch.Generator:
    """A generator seeded from a secret key: the same noise for the same key, unguessable without it."""
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))


@torch.no_grad()
def protect(adapter: Adapter, noise: float = DEFAULT_NOISE, keys: Sequence[bytes] | None = None) -> Adapter:
    """The factors a site sends instead of ``adapter`` (any batch size; every row drawn apart).

    Each column of ``B`` gets isotropic Gaussian noise of ``noise`` times the column's norm;
    ``noise=0`` sends the factors as they are. Row ``i``'s noise is drawn from ``keys[i]`` when
    given, else from ``os.urandom``. A site keys each row by a secret and the documents it was made
    from, so asking about the same documents again returns the same noise: fresh noise on every
    send could be averaged away by a receiver that asks many times.

    No exact re-factorisation of ``ΔW`` (a rank-space rotation, say) is offered: the span and
    mixture attacks of :func:`fedprag.shared.eval.leakage.inversion` read ``ΔW`` itself, and on the built-in model a rotation
    did not hide the tokens from the nearest-token attack either (its columns are parallel).
    """
    if noise < 0:
        raise ValueError(f"protect: noise must be zero or more, got {noise}")
    if not noise:
        return adapter
    rows = next(iter(adapter.values())).B.shape[0]
    generators = [_keyed_generator(keys[i]) if keys is not None else _fresh_generator() for i in range(rows)]
    protected = {}
    for name, delta in adapter.items():
        a, b = folded_factors(delta)
        draws = torch.stack([torch.randn(b.shape[1:], generator=g, dtype=b.dtype) for g in generators])
        b = b + noise * b.norm(dim=1, keepdim=True) / b.shape[1] ** 0.5 * draws
        protected[name] = LowRank(A=a, B=b, scale=delta.scale)
    return protected
