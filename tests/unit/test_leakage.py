"""What generated LoRA factors give away (inversion) and the protection a site applies before sending them."""

import pytest
import torch

from fedprag.shared.eval.leakage import (
    inversion,
    longest_common_substring,
    protect,
    token_recall,
)
from fedprag.shared.lora.layers import LowRank

VOCAB, WIDTH, RANK, INNER = 500, 64, 8, 96


@pytest.fixture()
def copied():
    """An embedding table and a hand-built adapter whose ``down_proj`` B columns are a document's token
    embeddings (the copy path at its sharpest), plus a module of another shape that is never decoded."""
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(VOCAB, WIDTH, generator=generator)
    document = torch.randperm(VOCAB, generator=generator)[:RANK].tolist()
    adapter = {
        "model.layers.0.mlp.down_proj": LowRank(A=torch.randn(1, RANK, INNER, generator=generator),
                                                B=embeddings[document].T.unsqueeze(0).clone(), scale=2.0),
        "model.layers.0.mlp.up_proj": LowRank(A=torch.randn(1, RANK, 3 * WIDTH // 2, generator=generator),
                                              B=torch.randn(1, INNER, RANK, generator=generator), scale=2.0),
    }
    return embeddings, document, adapter


def delta_w(adapter, name):
    d = adapter[name]
    return d.scale * d.B[0] @ d.A[0]


def test_inversion_recovers_copied_embeddings(copied):
    embeddings, document, adapter = copied
    found = inversion(adapter, embeddings, document, facts=[[document[0]], [document[1], document[2]]])
    assert found.nearest.recovered == 1.0 and found.nearest.facts == 1.0
    assert found.vectors == RANK  # the B columns; no A row or other B is the model's width
    assert found.span.recovered == 1.0 and found.span.false_positive < 0.01
    assert found.directions == RANK


def test_without_noise_the_factors_are_sent_as_they_are(copied):
    _, _, adapter = copied
    assert protect(adapter, noise=0.0) is adapter


def test_noise_lowers_what_the_attacks_recover(copied):
    embeddings, document, adapter = copied
    found = inversion(protect(adapter, noise=4.0, keys=[b"a fixed key"]), embeddings, document)  # reproducible
    assert found.span.recovered < 0.5 and found.nearest.recovered < 0.75


def test_unkeyed_noise_is_not_reproducible_and_keyed_noise_is_the_same_for_the_same_key(copied):
    _, _, adapter = copied
    name = "model.layers.0.mlp.down_proj"
    first, second = protect(adapter, 1.0), protect(adapter, 1.0)
    assert not torch.allclose(first[name].B, second[name].B)
    same, again, other = (protect(adapter, 1.0, keys=[k]) for k in (b"secret|p1", b"secret|p1", b"secret|p2"))
    assert torch.equal(same[name].B, again[name].B) and not torch.allclose(same[name].B, other[name].B)
    with pytest.raises(ValueError, match="noise"):
        protect(adapter, noise=-1.0)


def test_extraction_metrics():
    passage = "Rupol Mitakant plays the cello. Rupol Mitakant grew up in Garsk."
    assert longest_common_substring("he PLAYS THE CELLO well", passage) == len(" plays the cello")
    assert token_recall("cello, Garsk", passage) == pytest.approx(2 / 8)  # 8 distinct words once "the" is dropped
