"""Per-request LoRA: a batch with different adapters equals each request run alone."""

import pytest
import torch
from torch import nn

from fedprag.shared.lora.layers import LoRALinear, LowRank, applied, attach_lora, init_factors
from fedprag.shared.methods.prag.layers import PRAGAdapters


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
