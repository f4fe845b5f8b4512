"""Per-request LoRA: a batch with different adapters equals each request run alone."""

import pytest
import torch
from torch import nn

from fedprag.shared.lora.layers import LoRALinear, LowRank, applied, attach_lora, init_factors
from fedprag.shared.methods.base import Routing
from fedprag.shared.methods.baselines import ClosedBookModel
from fedprag.shared.methods.prag.layers import PRAGAdapters
from fedprag.shared.methods.prag.model import PRAGModel
from fedprag.shared.models.loading import load_causal_lm
from fedprag.shared.query import PerRequestMerge, QueryEngine


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.up_proj = nn.Linear(8, 16)
        self.down_proj = nn.Linear(16, 8)
        self.other = nn.Linear(8, 8)

    def forward(self, x):
        return self.other(self.down_proj(torch.relu(self.up_proj(x))))


def _random_factors(layers, count, rank, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: (torch.randn(count, rank, l.in_features, generator=g), torch.randn(count, l.out_features, rank, generator=g))
            for n, l in layers.items()}


def test_attach_wraps_only_targets_freezes_base_and_is_idempotent():
    model = TwoLayer()
    layers = attach_lora(model, ("up_proj", "down_proj"))
    assert set(layers) == {"up_proj", "down_proj"} and isinstance(model.up_proj, LoRALinear)
    assert not any(p.requires_grad for p in model.parameters())
    assert attach_lora(model, ("up_proj", "down_proj")) == layers
    with pytest.raises(ValueError):
        attach_lora(TwoLayer(), ("q_proj",))


def test_batched_per_request_adapters_match_one_at_a_time():
    torch.manual_seed(0)
    model = TwoLayer()
    layers = attach_lora(model, ("up_proj", "down_proj"))
    factors = _random_factors(layers, 3, 2)
    x = torch.randn(3, 5, 8)
    with applied(layers, {n: LowRank(a, b, 0.5) for n, (a, b) in factors.items()}):
        batched = model(x)
    for i in range(3):
        with applied(layers, {n: LowRank(a[i:i + 1], b[i:i + 1], 0.5) for n, (a, b) in factors.items()}):
            alone = model(x[i:i + 1])
        torch.testing.assert_close(batched[i:i + 1], alone)
    bare = model(x)  # the adapter is removed after the block
    with applied(layers, None):
        torch.testing.assert_close(model(x), bare)


def test_prag_sum_equals_adding_delta_w():
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    layers = attach_lora(nn.Sequential(layer), ("0",))
    (a, b), = _random_factors(layers, 5, 2).values()
    adapters = PRAGAdapters([f"p{i}" for i in range(5)], {"0": (a, b)}, scale=16.0)
    rows = torch.tensor([[0, 3, 4], [1, 1, 2]])
    x = torch.randn(2, 1, 8)
    with applied(layers, adapters.summed(rows)):
        got = layers["0"](x)
    for i in range(2):
        delta_w = sum(b[j] @ a[j] for j in rows[i].tolist()) * 16.0
        torch.testing.assert_close(got[i], x[i] @ (layer.weight + delta_w).T + layer.bias)


def test_shared_init_starts_every_lora_at_zero_delta():
    layers = attach_lora(TwoLayer(), ("up_proj", "down_proj"))
    factors = init_factors(layers, 4, 2, seed=1)
    for a, b in factors.values():
        assert torch.equal(a[0], a[3]) and a.abs().sum() > 0
        assert torch.count_nonzero(b) == 0


def test_unknown_passage_is_an_error():
    adapters = PRAGAdapters(["p0"], {}, 1.0)
    with pytest.raises(KeyError, match="p9"):
        adapters.rows(["p0", "p9"])


def test_per_request_merge_answers_as_the_batched_path_does(random_llama_path):
    """PRAG as published (each request's LoRA merged into the weights, one at a time) gives the same
    answers as the batched LoRA path, and leaves the base weights as they were."""
    base = load_causal_lm(str(random_llama_path))
    engine = QueryEngine(base)
    layers = engine.layers
    factors = {n: (a * 0.3, b * 0.3) for n, (a, b) in _random_factors(layers, 4, 2, seed=3).items()}
    prag = PRAGModel(PRAGAdapters([f"p{i}" for i in range(4)], factors, scale=2.0))
    questions = ["Where was Ada born?", "What does Ada do?", "Who is Ada?"]
    routings = [Routing(passage_ids=ids) for ids in (("p0", "p1"), ("p2", "p1"), ("p3", "p0"))]
    weights = {n: layer.base.weight.clone() for n, layer in layers.items()}
    merged_answers = engine.answer(PerRequestMerge(prag), questions, routings, 6, 6)
    assert merged_answers == engine.answer(prag, questions, routings, 6, 6)
    assert merged_answers != engine.answer(ClosedBookModel(), questions, routings, 6, 6)
    for name, layer in layers.items():
        assert torch.equal(layer.base.weight, weights[name])
