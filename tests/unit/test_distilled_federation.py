"""Distilled mode's pieces: its wire messages, the generator's aggregation, the site's training
examples, and how the query API combines the LoRAs that sites generate.

The rounds over real SuperNodes and daemons are tested in
tests/integration/test_distilled_federation.py; the bytes on the wire in test_wire_canary.py."""

import dataclasses
import random

import numpy as np
import pytest
import torch

from fedprag.cluster.serving.fanout import FanOut, check_factor_reply, combine_factor_replies
from fedprag.cluster.serving.modes import serving_mode
from fedprag.coordinator.privacy import DPSettings
from fedprag.coordinator.strategy import GeneratorAveraging
from fedprag.shared.config import ConfigError, load_config
from fedprag.shared.data.schema import Augmentation, Passage
from fedprag.shared.lora.layers import LowRank
from fedprag.shared.methods.distilled import DistilledConfig, serializer
from fedprag.shared.methods.distilled.trainer import document_sampler
from fedprag.shared.methods.poly.config import PolyConfig
from fedprag.shared.wire import (
    RELEASES,
    TASKS,
    FactorReply,
    GeneratorRelease,
    GeneratorTask,
    GeneratorUpdate,
    RoutingReply,
    WireError,
    decode,
    decode_proto,
)

PARAMS = {"read.0.weight": np.ones((4, 6), dtype=np.float32), "gate": np.zeros((2, 3), dtype=np.float32)}


def _update(site, scale, qa_pairs=10, **changes):
    return GeneratorUpdate(site=site, round=1, version=0, passages=3, qa_pairs=qa_pairs, loss=1.0,
                           generator={k: v * scale for k, v in {**PARAMS, **changes}.items()})


def test_generator_messages_round_trip_and_are_decoded_by_the_kind_they_declare():
    task = GeneratorTask(round=2, version=1, generator=PARAMS, settings=DistilledConfig().to_numbers())
    decoded = decode(task.to_record(), TASKS)
    assert isinstance(decoded, GeneratorTask) and decoded.round == 2
    assert np.array_equal(decoded.generator["read.0.weight"], PARAMS["read.0.weight"])
    assert DistilledConfig.from_numbers(decoded.settings) == DistilledConfig()
    release = GeneratorRelease(version=3, generator=PARAMS, settings={})
    assert isinstance(decode(release.to_record(), RELEASES), GeneratorRelease)
    with pytest.raises(WireError, match="not one of"):  # a round task is not a release
        decode(task.to_record(), RELEASES)


def test_a_factor_reply_crosses_grpc_and_its_passages_keep_their_order_by_score():
    scores = {f"x{i}": s for i, s in enumerate([0.2, 0.9, 0.5, 0.7])}
    reply = FactorReply(site="site-a", version=4, lengths={f"x{i}": float(10 + i) for i in range(4)}, scores=scores,
                        factors={"m.lora_A": np.ones((2, 3), dtype=np.float32),
                                 "m.lora_B": np.ones((5, 2), dtype=np.float32)})
    back = decode_proto(reply.to_proto(), (RoutingReply, FactorReply))
    assert isinstance(back, FactorReply) and back.lengths == reply.lengths
    check_factor_reply(back)
    routing = combine_factor_replies([back], k=2, temperature=0.05)
    assert routing.lengths == ((11, 13, 12, 10),)  # best first, as the site's generator read them
    with pytest.raises(WireError):  # a text value fits no field
        FactorReply(site="site-a", version=4, lengths={}, scores={}, factors={"m.lora_A": "Kara Lo plays the harp"})


@pytest.mark.parametrize(("change", "reason"), [
    ({"lengths": {"x0": 12.5}}, "whole numbers"),
    ({"lengths": {"x0": 1e9}}, "whole numbers"),
    ({"lengths": {}}, "token counts"),
    ({"factors": {"m.lora_A": np.ones((2, 3), dtype=np.float32)}}, "pairs"),
    ({"factors": {"m.lora_A": np.ones((2, 3), dtype=np.float32), "m.lora_B": np.ones((5, 3), dtype=np.float32)}},
     r"\[r, in\]"),
    ({"factors": {}}, "only with them"),
])
def test_a_malformed_factor_reply_is_refused_before_it_reaches_a_replica(change, reason):
    good = {"site": "site-a", "version": 1, "lengths": {"x0": 12.0}, "scores": {"x0": 0.5},
            "factors": {"m.lora_A": np.ones((2, 3), dtype=np.float32), "m.lora_B": np.ones((5, 2), dtype=np.float32)}}
    check_factor_reply(FactorReply(**good))
    with pytest.raises(WireError, match=reason):
        check_factor_reply(FactorReply(**{**good, **change}))


def test_generators_are_averaged_by_example_count_and_malformed_updates_refused():
    merged = GeneratorAveraging.aggregate(PARAMS, [_update("a", 1.0, qa_pairs=30), _update("b", 3.0, qa_pairs=10)])
    assert np.allclose(merged["read.0.weight"], 1.5)  # (30·1 + 10·3) / 40
    with pytest.raises(WireError, match="do not match"):
        GeneratorAveraging.validate(_update("c", 1.0, gate=np.zeros((3, 3), dtype=np.float32)), PARAMS)
    with pytest.raises(WireError, match="no QA pairs"):
        GeneratorAveraging.validate(_update("d", 1.0, qa_pairs=0), PARAMS)


def test_under_dp_one_site_moves_the_generator_by_at_most_the_clip_norm_over_the_sites_asked():
    settings = DPSettings(clip=0.5, noise_multiplier=1e-9)
    honest = [_update("a", 1.0)]
    adversary = _update("evil", 1e6)
    without = GeneratorAveraging.private_aggregate(PARAMS, honest, settings, sites_asked=4)
    with_it = GeneratorAveraging.private_aggregate(PARAMS, honest + [adversary], settings, sites_asked=4)
    moved = np.sqrt(sum(((with_it[k] - without[k]).astype(np.float64) ** 2).sum() for k in PARAMS))
    assert moved <= 0.5 / 4 + 1e-4


def test_a_site_distils_on_its_own_passages_questions_with_its_own_passages_as_distractors():
    passages = [Passage(f"p{i}", 0, f"Person {i} plays the harp.") for i in range(4)]
    augmentations = {f"p{i}": Augmentation(f"p{i}", "", [(f"What does person {i} play?", "harp")]) for i in range(3)}
    sample = document_sampler(passages, augmentations, DistilledConfig(distractor_share=1.0))
    rng = random.Random(0)
    for _ in range(20):
        (example,) = sample(rng)
        owner = example.question.split()[3]
        assert example.documents[0] == f"Person {owner} plays the harp."  # the question's passage comes first
        assert 2 <= len(example.documents) <= 3 and "Person 3" not in " ".join(example.documents)  # no QA, not used
    with pytest.raises(ValueError, match="QA pairs"):
        document_sampler(passages[3:], augmentations, DistilledConfig())


def test_concatenated_ranks_add_the_sites_loras_and_short_rows_are_padded_with_nothing():
    rng = np.random.default_rng(0)
    sites = [{"m.lora_A": rng.normal(size=(2, 5)).astype(np.float32),
              "m.lora_B": rng.normal(size=(3, 2)).astype(np.float32)} for _ in range(2)]
    adapter = serializer.combined_adapter([sites, sites[:1]])
    delta = adapter["m"]
    assert delta.A.shape == (2, 4, 5) and delta.B.shape == (2, 3, 4) and delta.scale == 1.0
    expected = sum(s["m.lora_B"] @ s["m.lora_A"] for s in sites)
    assert np.allclose((delta.B[0] @ delta.A[0]).numpy(), expected, atol=1e-5)
    assert np.allclose((delta.B[1] @ delta.A[1]).numpy(), sites[0]["m.lora_B"] @ sites[0]["m.lora_A"], atol=1e-5)
    row = serializer.factor_arrays({"m": LowRank(torch.from_numpy(np.stack([sites[0]["m.lora_A"]])),
                                                 torch.from_numpy(np.stack([sites[0]["m.lora_B"]])), 2.0)}, 0)
    assert np.allclose(row["m.lora_B"], 2.0 * sites[0]["m.lora_B"])  # the scale travels folded into B


def _factor_reply(site, hits, version=1):
    return FactorReply(site=site, version=version, scores={f"{site}-{i}": s for i, s in enumerate(hits)},
                       lengths={f"{site}-{i}": float(10 + i) for i in range(len(hits))},
                       factors={"m.lora_A": np.full((1, 2), ord(site[-1]), dtype=np.float32),
                                "m.lora_B": np.ones((3, 1), dtype=np.float32)})


def test_sites_holding_the_global_top_k_contribute_their_loras_weighed_by_their_best_scores():
    replies = [_factor_reply("site-a", [0.5, 0.4]), _factor_reply("site-b", [0.55]), _factor_reply("site-c", [0.1])]
    routing = combine_factor_replies(replies, k=2, temperature=0.05)
    assert [f["m.lora_A"][0, 0] for f in routing.factors] == [ord("b"), ord("a")]  # best site first; c left out
    assert routing.lengths == ((10,), (10, 11)) and routing.scores == (0.55, 0.5)
    weights = [float(f["m.lora_B"][0, 0]) for f in routing.factors]  # lora_B was all ones: it now holds w_s
    assert weights == pytest.approx([1 / (1 + np.exp(-1)), 1 - 1 / (1 + np.exp(-1))], rel=1e-5)  # softmax(0.05/0.05)
    far = combine_factor_replies([_factor_reply("site-a", [0.9]), _factor_reply("site-b", [0.5])], k=2, temperature=0.05)
    assert len(far.factors) == 1 and far.factors[0]["m.lora_B"][0, 0] == pytest.approx(1.0)  # a far second is left out


class _FactorSite:
    def __init__(self, name, hits, version=1):
        self.name, self.hits, self.version = name, hits, version

    def route(self, query_embeddings, k, score_temperature):
        return [_factor_reply(self.name, self.hits, self.version) for _ in query_embeddings]


class _PolySite(_FactorSite):
    def route(self, query_embeddings, k, score_temperature):
        return [RoutingReply(site=self.name, version=self.version, scores={"x0": 0.99},
                             mixture={"mixture": np.full((1, 4), 0.25, dtype=np.float32)}) for _ in query_embeddings]


def test_a_site_whose_factors_have_another_shape_is_skipped_and_named():
    odd = _FactorSite("site-odd", [0.99])
    odd.route = lambda q, k, t: [FactorReply(site="site-odd", version=1, lengths={"x": 5.0}, scores={"x": 0.99},
                                             factors={"m.lora_A": np.ones((2, 2), dtype=np.float32),
                                                      "m.lora_B": np.ones((3, 2), dtype=np.float32)})]
    sites = [_FactorSite("site-a", [0.5]), _FactorSite("site-b", [0.4]), odd]
    _, trace = FanOut(sites, k=2, config=PolyConfig(), mode=serving_mode("distilled")).route(np.zeros((1, 8), np.float32))
    assert sorted(trace.answered) == ["site-a", "site-b"] and "another shape" in trace.failed["site-odd"]


def test_a_site_serving_the_other_mode_is_skipped_and_named():
    fanout = FanOut([_FactorSite("site-a", [0.5]), _PolySite("site-p", [])], k=2, config=PolyConfig(), mode=serving_mode("distilled"))
    (routing,), trace = fanout.route(np.zeros((1, 8), dtype=np.float32))
    assert trace.answered == ["site-a"] and "other mode" in trace.failed["site-p"]
    assert len(routing.factors) == 1 and routing.lengths == ((10,),)


def test_the_mode_and_the_federated_distillation_settings_are_validated_by_name():
    with pytest.raises(ConfigError, match="federation.mode"):
        load_config(None, {"federation.mode": "both"})
    with pytest.raises(ConfigError, match="distilled.start"):
        load_config(None, {"distilled.start": "warm"})
    with pytest.raises(ConfigError, match="distilled.local_steps"):
        load_config(None, {"distilled.local_steps": 0})


def test_federated_settings_do_not_change_which_pretrained_generator_is_cached():
    base = DistilledConfig()
    tuned = dataclasses.replace(base, local_steps=7, finetune_lr=1e-5, proximal_mu=0.1, start="scratch")
    assert serializer.cache_dir("d" * 64, base) == serializer.cache_dir("d" * 64, tuned)
    assert serializer.cache_dir("d" * 64, base) != serializer.cache_dir("d" * 64, dataclasses.replace(base, rank=4))


def test_a_resumed_coordinator_knows_which_settings_bind_a_generator():
    assert {"rank", "width", "seed"} <= set(DistilledConfig.SHAPE)
    assert not set(DistilledConfig.SHAPE) & set(DistilledConfig.FEDERATED)
