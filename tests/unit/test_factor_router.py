"""A distilled-mode site's routing service, on a small random model: what one reply carries, that
a query with no passage gets no factors, that noise is keyed by the passages (asking again returns
the same noise), and that the query API's model turns the replies into prompts and one adapter."""

import dataclasses

import numpy as np
import pytest
import torch

from fedprag.client.routing_service import FactorRouter
from fedprag.client.store import SiteStore
from fedprag.cluster.serving.fanout import check_factor_reply, combine_factor_replies
from fedprag.shared.lora.layers import attach_lora
from fedprag.shared.methods.distilled import DistilledConfig
from fedprag.shared.methods.distilled.layers import MASK_TOKEN
from fedprag.shared.methods.distilled.model import DistilledModel
from fedprag.shared.methods.distilled.trainer import new_encoder
from fedprag.shared.models.loading import load_causal_lm
from fedprag.shared.retrieval.encoder import SentenceEncoder

SMALL = DistilledConfig(width=16, heads=2, depth=1, max_doc_tokens=64)
TEXTS = ["Kara Lovel came into the world in 1873.", "Lo Fenwick plays the harp.", "Mi Quessa works as a baker."]


@pytest.fixture()
def site(tmp_path, random_llama_path):
    store = SiteStore(tmp_path / "site", site_id="site-a")
    store.add_passages([(f"p{i}", t) for i, t in enumerate(TEXTS)])
    base = load_causal_lm(str(random_llama_path))
    generator = new_encoder(base, attach_lora(base.model), SMALL)
    return store, generator, SentenceEncoder()


def test_a_site_sends_only_the_passages_its_generator_reads_whole(site):
    store, generator, encoder = site
    tight = FactorRouter(store, encoder, new_encoder(generator.base, generator.layers,
                                                     dataclasses.replace(SMALL, max_doc_tokens=24)), version=1)
    (reply,) = tight.route(encoder.embed(["Who plays the harp?"]), k=3, score_temperature=1.0)
    assert 1 <= len(reply.scores) < 3 and sum(reply.lengths.values()) + len(reply.lengths) - 1 <= 24


def test_a_reply_carries_scores_token_counts_and_one_lora_for_the_top_passages(site):
    store, generator, encoder = site
    router = FactorRouter(store, encoder, generator, version=3)
    (reply,) = router.route(encoder.embed(["Who plays the harp?"]), k=2, score_temperature=1.0)
    check_factor_reply(reply)
    assert reply.version == 3 and len(reply.scores) == 2 and set(reply.lengths) == set(reply.scores)
    best = max(reply.scores, key=reply.scores.get)
    assert reply.lengths[best] == len(generator.ids(TEXTS[1]))
    assert {k.rsplit(".", 1)[1] for k in reply.factors} == {"lora_A", "lora_B"}
    wire = reply.to_proto().SerializeToString()
    assert not any(word.encode() in wire for text in TEXTS for word in text.split() if len(word) > 4)


def test_noise_is_keyed_by_the_passages_so_asking_again_does_not_average_it_away(site):
    store, generator, encoder = site
    raw = FactorRouter(store, encoder, generator, version=1)
    noisy = FactorRouter(store, encoder, generator, version=1, factor_noise=1.0)
    query = encoder.embed(["Who plays the harp?"])
    first, second = noisy.route(np.concatenate([query, query]), k=1, score_temperature=1.0)
    (plain,) = raw.route(query, k=1, score_temperature=1.0)
    for key in plain.factors:
        assert np.array_equal(first.factors[key], second.factors[key])
        if key.endswith("lora_B") and np.abs(plain.factors[key]).sum() > 0:
            assert not np.allclose(first.factors[key], plain.factors[key])


def test_a_passage_added_later_is_served_at_once(site):
    store, generator, encoder = site
    router = FactorRouter(store, encoder, generator, version=1)
    store.add_passages([("p9", "Ze Garsk draws a salary from Brandor Mills.")])
    router.add(["p9"])
    (reply,) = router.route(encoder.embed(["Who pays Ze Garsk?"]), k=1, score_temperature=1.0)
    assert list(reply.lengths.values()) == [len(generator.ids("Ze Garsk draws a salary from Brandor Mills."))]


def test_the_query_api_model_prompts_with_mask_tokens_and_applies_the_sites_loras(site, random_llama_path):
    store, generator, encoder = site
    router = FactorRouter(store, encoder, generator, version=1)
    questions = ["Who plays the harp?", "Who works as a baker?"]
    replies = router.route(encoder.embed(questions), k=1, score_temperature=1.0)
    routings = [combine_factor_replies([r], k=1, temperature=0.05) for r in replies]
    served = load_causal_lm(str(random_llama_path))
    model = DistilledModel.served(served, generator.mask_vector)
    prompts = model.prompts(questions, routings)
    assert prompts[0].count(MASK_TOKEN) == len(generator.ids(TEXTS[1])) == sum(routings[0].lengths[0])
    adapter = model.adapter(routings)
    direct = generator.adapters([[TEXTS[1]], [TEXTS[2]]])  # what the sites' generator made from the top passages
    for name, delta in adapter.items():
        made = direct[name]
        assert torch.allclose(delta.B @ delta.A, made.scale * made.B @ made.A, atol=1e-5)
    with pytest.raises(ValueError, match="mixes"):
        model.adapter([routings[0], dataclasses.replace(routings[1], factors=())])
    crowded = dataclasses.replace(routings[0], factors=routings[0].factors * 3,
                                  lengths=((model.document_budget - 20,), (15,), (30,)))
    assert model.prompts(["q"], [crowded])[0].count(MASK_TOKEN) == model.document_budget - 5  # the third site is left out
    assert next(iter(model.adapter([crowded]).values())).A.shape[1] == 2 * SMALL.rank
    with pytest.raises(ValueError, match="another mask vector"):
        DistilledModel.served(served, torch.zeros_like(generator.mask_vector))
