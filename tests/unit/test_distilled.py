"""DistilledPRAG: the mask token, the generator's adapters, distillation steps, and its checkpoint."""

import dataclasses
import logging
import math
import random

import pytest
import torch

from fedprag.shared.data.schema import Augmentation, Passage
from fedprag.shared.lora.layers import attach_lora
from fedprag.shared.lora.store import EncodingMismatch
from fedprag.shared.methods.distilled import DistilledConfig, serializer
from fedprag.shared.methods.distilled.layers import MASK_TOKEN, document_spread
from fedprag.shared.methods.distilled.trainer import (
    Schedule,
    distil,
    document_sampler,
    new_encoder,
    synthesise,
    train_generator,
)
from fedprag.shared.models.loading import load_causal_lm

SMALL = DistilledConfig(width=16, heads=2, depth=1, steps=3, batch_size=4, max_doc_tokens=64)
DOCS = [["Kara Lo was born in 1901. Kara Lo plays the harp."], ["Mi Ze grew up in Quessa. Mi Ze is a baker."]]


@pytest.fixture()
def base(random_llama_path):
    return load_causal_lm(str(random_llama_path))


@pytest.fixture()
def trained(base):
    return train_generator(base, attach_lora(base.model), SMALL, show_progress=False)


def test_generated_adapters_cover_every_module_with_batched_factors(base, trained):
    encoder, loss = trained
    adapter = encoder.adapters(DOCS)
    layers = attach_lora(base.model)
    assert set(adapter) == set(layers) and math.isfinite(loss)
    for name, delta in adapter.items():
        assert delta.A.shape == (2, SMALL.rank, layers[name].in_features)
        assert delta.B.shape == (2, layers[name].out_features, SMALL.rank)
    assert any(delta.B.abs().sum() > 0 for delta in adapter.values())  # training moved B off zero
    different = sum((adapter[n].B[0] @ adapter[n].A[0] - adapter[n].B[1] @ adapter[n].A[1]).abs().sum() for n in adapter)
    assert different > 0  # different documents give different LoRAs
    assert set(document_spread(adapter)) == set(layers) and max(document_spread(adapter).values()) > 0
    assert max(document_spread(encoder.adapters([DOCS[0], DOCS[0]])).values()) == pytest.approx(0, abs=1e-6)


def test_encoding_passages_in_batches_gives_each_the_lora_it_gets_alone(trained):
    encoder, _ = trained
    texts = [DOCS[0][0], DOCS[1][0], "Ru Va works as a notary."]
    batches = encoder.encode(texts, batch_size=2)
    assert [next(iter(b.values())).A.shape[0] for b in batches] == [2, 1]
    for row, text in enumerate(texts):
        alone = encoder.adapters([[text]])
        batched = batches[row // 2]
        for name, delta in alone.items():
            got = batched[name]
            torch.testing.assert_close(got.B[row % 2] @ got.A[row % 2], delta.B[0] @ delta.A[0], atol=1e-5, rtol=1e-4)


def test_a_fresh_generator_writes_only_the_documents_own_token_embeddings(base):
    """At initialisation the only update is the copy path: every column of a residual-writing
    module's B is a mix of the document's input embeddings, and the other modules' B is zero."""
    layers = attach_lora(base.model)
    encoder, _ = train_generator(base, layers, dataclasses.replace(SMALL, steps=0), show_progress=False)
    adapter = encoder.adapters(DOCS)
    embeddings = base.model.get_input_embeddings().weight.detach()
    spans = [embeddings[encoder.ids(doc[0])] for doc in DOCS]  # [tokens, hidden] per document

    def off_span(columns, span):  # the part of each column outside the span of the embeddings
        inside = span.T @ (torch.linalg.pinv(span.T) @ columns.T)
        return float((columns - inside.T).norm() / columns.norm())

    for delta in adapter.values():
        if delta.B.shape[1] != base.model.config.hidden_size:
            assert torch.count_nonzero(delta.B) == 0
            continue
        for row, span in enumerate(spans):
            assert off_span(delta.B[row].T.detach(), span) < 1e-4
        assert off_span(delta.B[0].T.detach(), spans[1]) > 0.1  # and not the other document's


def test_training_examples_ask_what_their_documents_hold():
    rng, config = random.Random(0), dataclasses.replace(SMALL, pair_share=0.3, distractor_share=0.5)
    groups = [synthesise(rng, config) for _ in range(200)]
    pairs = [g for g in groups if len(g) == 1]
    singles = [g for g in groups if len(g) > 1]
    assert pairs and singles and any(len(g[0].documents) > 1 for g in singles)
    for group in singles:
        assert len({e.question for e in group}) == len(group) == config.questions_per_document
        assert all(e.documents is group[0].documents and e.answer in e.documents[0] for e in group)
    for (example,) in pairs:
        assert len(example.documents) == 2 and any(example.answer in d for d in example.documents)


def test_the_mask_token_has_one_frozen_embedding_and_leaves_other_inputs_alone(base, trained):
    encoder, _ = trained
    embedding = base.model.get_input_embeddings()
    assert encoder.mask_id >= embedding.num_embeddings  # the model's table was not resized
    ids = torch.tensor([[5, encoder.mask_id, 7, encoder.mask_id]])
    out = embedding(ids)
    assert torch.equal(out[0, 1], encoder.mask_vector) and torch.equal(out[0, 3], encoder.mask_vector)
    assert torch.equal(out[0, 0], embedding.weight[5])
    prompt = encoder.masked_prompt(["Kara Lo plays the harp."], "What does Kara Lo play?")
    assert MASK_TOKEN in prompt and "harp" not in prompt
    ids = torch.tensor([base.tokenizer(prompt)["input_ids"]])
    assert (ids == encoder.mask_id).sum() == len(encoder.ids("Kara Lo plays the harp."))
    # through the whole model, the hook equals feeding the mask vector by hand
    by_hand = embedding.weight[ids.masked_fill(ids == encoder.mask_id, 0)]
    by_hand[ids == encoder.mask_id] = encoder.mask_vector
    with torch.no_grad():
        assert torch.allclose(base.model(input_ids=ids).logits, base.model(inputs_embeds=by_hand).logits, atol=1e-5)


def test_long_documents_are_truncated_with_a_warning(trained, caplog):
    encoder, _ = trained
    long = " ".join(["Kara Lo was born in 1901."] * 60)
    with caplog.at_level(logging.WARNING, logger="fedprag"):
        adapter = encoder.adapters([[long]])
    assert "distilled.documents.truncated" in caplog.text
    assert all(torch.isfinite(d.A).all() for d in adapter.values())


def test_checkpoint_round_trips_and_is_refused_for_another_base_model(base, trained, tmp_path):
    encoder, _ = trained
    serializer.save(tmp_path / "gen", encoder)
    loaded = serializer.load(tmp_path / "gen", base, attach_lora(base.model))
    for name, delta in encoder.adapters(DOCS).items():
        assert torch.allclose(delta.B, loaded.adapters(DOCS)[name].B)
    other = dataclasses.replace(base, digest="0" * 64)
    with pytest.raises(EncodingMismatch, match="base model"):
        serializer.load(tmp_path / "gen", other, attach_lora(base.model))


@pytest.mark.parametrize("field, value", [("rank", 0), ("heads", 3), ("pair_share", 1.5), ("distractor_share", -0.1),
                                                 ("questions_per_document", 0), ("temperature", 0.0)])
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"distilled.{field}"):
        dataclasses.replace(DistilledConfig(), **{field: value}).validate()



@pytest.mark.environment  # sets environment variables (tests/phases.py)
def test_generator_cache_is_keyed_by_base_model_settings_and_training_code(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDPRAG_HOME", str(tmp_path))
    here = serializer.cache_dir("a" * 64, DistilledConfig())
    assert here == serializer.cache_dir("a" * 64, DistilledConfig())
    assert here.parent == tmp_path / "generators"
    assert serializer.cache_dir("b" * 64, DistilledConfig()) != here
    assert serializer.cache_dir("a" * 64, DistilledConfig(steps=601)) != here
    monkeypatch.setattr(serializer, "TRAINING_VERSION", serializer.TRAINING_VERSION + 1)
    assert serializer.cache_dir("a" * 64, DistilledConfig()) != here


def test_fedprox_keeps_a_sites_generator_nearer_the_one_it_received(base):
    """A site's distillation on its own documents, with and without FedProx's pull (μ) towards the
    generator the round sent it."""
    passages = [Passage(f"p{i}", 0, doc[0]) for i, doc in enumerate(DOCS)]
    augmentations = {"p0": Augmentation("p0", "", [("When was Kara Lo born?", "1901"), ("What does Kara Lo play?", "harp")]),
                     "p1": Augmentation("p1", "", [("Where did Mi Ze grow up?", "Quessa")])}
    config = dataclasses.replace(SMALL, batch_size=2)
    moved = {}
    for mu in (0.0, 50.0):
        encoder = new_encoder(base, attach_lora(base.model), config)
        start = tuple(p.detach().clone() for p in encoder.generator.parameters())
        distil(encoder, document_sampler(passages, augmentations, config),
               Schedule(8, 1e-2, decay=False, proximal_mu=mu, anchor=start), random.Random(0), show_progress=False)
        moved[mu] = sum(float((p - s).pow(2).sum()) for p, s in zip(encoder.generator.parameters(), start)) ** 0.5
    assert 0 < moved[50.0] < 0.8 * moved[0.0], moved
