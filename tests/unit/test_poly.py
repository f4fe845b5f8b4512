"""Poly-PRAG: routed mixtures are exact, batch-invariant, exportable to PEFT, and guarded."""

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from fedprag.shared import prompts
from fedprag.shared.data.benchmark import BenchmarkSpec, make_benchmark
from fedprag.shared.lora.layers import applied, attach_lora
from fedprag.shared.lora.store import EncodingMismatch
from fedprag.shared.methods.poly import PolyConfig, serializer
from fedprag.shared.methods.poly.layers import ExpertPool, RoutingTable, combine, keep_top_m, placed, routing_weights
from fedprag.shared.methods.poly.trainer import (
    EncodingHealthError,
    answer_states,
    check_health,
    encode_incremental,
    last_layer_logits,
    train_pool,
)
from fedprag.shared.models.generate import generate_answers
from fedprag.shared.models.loading import load_causal_lm

PROMPTS = ["Question: When was Kara born?\nAnswer:", "Question: Who trained Lo?\nAnswer:",
           "Question: Where did Mi grow up?\nAnswer:", "Question: What does Ze play?\nAnswer:"]


@pytest.fixture()
def base(random_llama_path):
    return load_causal_lm(str(random_llama_path))


def _random_pool(layers, n_experts=6, rank=2, routing="shared", seed=0):
    pool = ExpertPool.initialised(layers, n_experts, rank, scale=4.0, routing=routing, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for b in pool.B.values():
            b.copy_(torch.randn(b.shape, generator=g) * 0.5)
    return pool.requires_grad_(False)


def test_pool_adapter_is_the_weighted_sum_of_expert_updates(base):
    layers = attach_lora(base.model)
    pool = _random_pool(layers)
    name = pool.names[0]
    w = torch.softmax(torch.randn(1, 1, pool.n_experts), -1)
    x = torch.randn(1, 3, layers[name].in_features)
    with applied(layers, pool.adapter(w)):
        y = layers[name](x)
    a, b = pool.factors(name)
    expected = layers[name].base(x) + pool.scale * sum(w[0, 0, k] * x @ a[k].T @ b[k].T for k in range(pool.n_experts))
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize("routing", ["shared", "per_layer"])
def test_batched_mixed_routings_answer_as_one_at_a_time(base, routing):
    layers = attach_lora(base.model)
    pool = _random_pool(layers, routing=routing)
    weights = routing_weights(torch.randn(len(PROMPTS), pool.n_groups, pool.n_experts) * 3)
    with applied(layers, pool.adapter(weights)):
        batched = generate_answers(base.model, base.tokenizer, PROMPTS, 6)
    alone = []
    for i, prompt in enumerate(PROMPTS):
        with applied(layers, pool.adapter(weights[i:i + 1])):
            alone += generate_answers(base.model, base.tokenizer, [prompt], 6)
    assert batched == alone
    with applied(layers, None):
        bare = generate_answers(base.model, base.tokenizer, PROMPTS, 6)
    assert bare != batched  # the mixtures really change the answers


def test_peft_export_loads_and_answers_the_same(base, random_llama_path, tmp_path):
    layers = attach_lora(base.model)
    pool = _random_pool(layers, routing="per_layer")
    mixture = keep_top_m(routing_weights(torch.randn(pool.n_groups, pool.n_experts) * 3), 3)
    serializer.export_peft(tmp_path / "peft", pool, mixture, str(random_llama_path))
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(random_llama_path), tmp_path / "peft").eval()
    ids = base.tokenizer(PROMPTS[:1], return_tensors="pt")
    with torch.no_grad(), applied(layers, pool.adapter(mixture[None])):
        ours = base.model(**ids).logits
    with torch.no_grad():
        theirs = peft_model(**ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    with applied(layers, pool.adapter(mixture[None])):
        assert generate_answers(base.model, base.tokenizer, PROMPTS, 6) == \
            generate_answers(peft_model, base.tokenizer, PROMPTS, 6)


@pytest.fixture()
def small_corpus():
    dataset = make_benchmark(BenchmarkSpec(people=5, sites=1))
    return dataset.passages, dataset.augmentations


@pytest.mark.parametrize("placement", ["all", "last"])
def test_incremental_encoding_trains_routing_and_leaves_experts_unchanged(base, small_corpus, placement):
    passages, augmentations = small_corpus
    layers = attach_lora(base.model)
    config = PolyConfig(n_experts=4, top_m=2, epochs=1, incremental_epochs=2, batch_size=8, layers=placement,
                        incremental_sampling=placement == "all")
    pool, routing, *_ = train_pool(base, layers, passages[:3], augmentations, config, show_progress=False)
    assert set(pool.names) == set(placed(layers, placement, config.targets))
    before = pool.digest()
    new_rows = encode_incremental(base, layers, pool, passages[3:], augmentations, config, show_progress=False)
    assert pool.digest() == before
    assert new_rows.passage_ids == [p.passage_id for p in passages[3:]]
    assert new_rows.logits.abs().sum() > 0  # routing moved away from its zero start
    merged = routing.extended(new_rows)
    assert merged.weights([passages[4].passage_id]).shape == (1, pool.n_groups, 4)
    with pytest.raises(ValueError, match="already exist"):
        merged.extended(new_rows)


def test_pool_sits_on_its_targets_in_its_layers(base):
    layers = attach_lora(base.model)
    last = placed(layers, "last", ("gate_proj", "up_proj", "down_proj"))
    assert last and set(last) < set(layers)
    assert {name.split(".layers.")[1].split(".")[0] for name in last} == {str(len(base.model.model.layers) - 1)}
    down = placed(layers, "all", ("down_proj",))
    assert len(down) == len(base.model.model.layers) and all(name.endswith(".down_proj") for name in down)
    assert set(placed(layers, "last", ("down_proj",))) == set(last) & set(down)


def test_answer_states_reproduce_the_whole_models_answer_logits(base, small_corpus):
    """The last-layer shortcut is exact: same logits as running the whole model under the mixture."""
    passages, augmentations = small_corpus
    layers = attach_lora(base.model)
    pool = _random_pool(placed(layers, "last", ("up_proj", "down_proj")))
    weights = routing_weights(torch.randn(len(passages), pool.n_groups, pool.n_experts) * 3)
    states = answer_states(base, passages, augmentations)
    assert len(states.starts) - 1 == sum(len(augmentations[p.passage_id].qa) for p in passages)
    with torch.no_grad(), applied(layers, pool.adapter(weights[states.rows])):
        shortcut = last_layer_logits(base, states.hidden)
    pair = 0
    for row, passage in enumerate(passages):
        for question, answer in augmentations[passage.passage_id].qa:
            text = prompts.closed_book(question) + prompts.completion(answer) + base.tokenizer.eos_token
            ids = base.tokenizer([text], return_tensors="pt")
            with torch.no_grad(), applied(layers, pool.adapter(weights[row:row + 1])):
                whole = base.model(**ids).logits[0]
            span = slice(int(states.starts[pair]), int(states.starts[pair + 1]))
            n = span.stop - span.start
            assert n >= 2  # at least one answer token and the end-of-text
            torch.testing.assert_close(shortcut[span], whole[-n - 1:-1], atol=1e-4, rtol=1e-4)
            assert states.targets[span].tolist() == ids["input_ids"][0, -n:].tolist()
            pair += 1


def test_pool_placement_is_validated():
    with pytest.raises(ValueError, match="poly.layers"):
        PolyConfig(layers="first").validate()
    with pytest.raises(ValueError, match="poly.routing"):
        PolyConfig(layers="last", routing="per_layer").validate()
    with pytest.raises(ValueError, match="poly.targets"):
        PolyConfig(targets=("q_proj",)).validate()
    config = PolyConfig(layers="last", n_experts=8, top_m=4)
    assert PolyConfig.from_numbers(config.to_numbers()) == config


def test_routing_rows_are_refused_for_another_pool_or_base_model(base, tmp_path):
    layers = attach_lora(base.model)
    pool, other = _random_pool(layers, seed=0), _random_pool(layers, seed=5)
    config = PolyConfig(n_experts=6, rank=2)
    serializer.save_pool(tmp_path / "pool", pool, config, base.digest)
    routing = RoutingTable(["a", "b"], torch.randn(2, 1, 6))
    serializer.save_routing(tmp_path / "routing", routing, pool, base.digest)
    loaded, manifest = serializer.load_pool(tmp_path / "pool", base.digest)
    assert loaded.digest() == pool.digest() and manifest["n_experts"] == 6 and manifest["rank"] == 2
    torch.testing.assert_close(serializer.load_routing(tmp_path / "routing", loaded, base.digest).logits, routing.logits)
    with pytest.raises(EncodingMismatch, match="belong to pool"):
        serializer.load_routing(tmp_path / "routing", other, base.digest)
    with pytest.raises(EncodingMismatch, match="made for base model"):
        serializer.load_pool(tmp_path / "pool", "f" * 64)
    # A federated site's rows continue against a later version of the pool: the shape must match.
    torch.testing.assert_close(serializer.load_routing(tmp_path / "routing", other, base.digest, same_pool=False).logits,
                               routing.logits)
    wider = _random_pool(layers, seed=1, n_experts=8)
    with pytest.raises(EncodingMismatch, match="routing rows are \\[1, 6\\], the pool needs \\[1, 8\\]"):
        serializer.load_routing(tmp_path / "routing", wider, base.digest, same_pool=False)


def test_unknown_passage_is_an_error():
    routing = RoutingTable(["a", "b"], torch.zeros(2, 1, 4))
    with pytest.raises(KeyError, match="no Poly-PRAG routing row"):
        routing.weights(["a", "zzz"])


def test_nan_is_refused_and_collapse_is_reported(base):
    layers = attach_lora(base.model)
    pool = _random_pool(layers)
    config = PolyConfig(n_experts=6, top_m=2)
    healthy = check_health(pool, RoutingTable(["a", "b", "c"], torch.randn(3, 1, 6) * 4), config)
    assert not healthy.collapsed and healthy.experts_used >= 2
    collapsed = torch.full((3, 1, 6), -5.0)
    collapsed[:, :, 2] = 5.0
    assert check_health(pool, RoutingTable(["a", "b", "c"], collapsed), config).collapsed
    with pytest.raises(EncodingHealthError, match="non-finite"):
        check_health(pool, RoutingTable(["a"], torch.full((1, 1, 6), float("nan"))), config)


def test_combine_weights_passages_by_score_and_keeps_top_m():
    w = torch.zeros(1, 2, 1, 4)
    w[0, 0, 0, 0], w[0, 1, 0, 3] = 1.0, 1.0
    mixed = combine(w, torch.tensor([[0.9, 0.1]]), top_m=4, score_temperature=0.05)
    assert mixed[0, 0, 0] > 0.99 and mixed.sum().item() == pytest.approx(1.0)
    kept = keep_top_m(torch.tensor([[0.1, 0.4, 0.2, 0.3]]), 2)
    torch.testing.assert_close(kept, torch.tensor([[0.0, 4 / 7, 0.0, 3 / 7]]))


def test_federated_training_options_constrain_the_pool(base, small_corpus):
    """FFA-LoRA (freeze_a) leaves every A untouched; FedProx (proximal_mu) keeps B near the start."""
    passages, augmentations = small_corpus
    layers = attach_lora(base.model)

    def trained_from_fresh_pool(**options):
        config = PolyConfig(n_experts=4, top_m=2, epochs=2, batch_size=8, lr=3e-2, **options)
        pool = ExpertPool.initialised(layers, 4, 1, config.scale, seed=0)
        start = {n: [t.detach().clone() for t in pool.factors(n)] for n in pool.names}
        trained = train_pool(base, layers, passages, augmentations, config, show_progress=False,
                             start=(pool, torch.zeros(len(passages), 1, 4))).pool
        moved_a = max(float((trained.factors(n)[0] - start[n][0]).abs().max()) for n in pool.names)
        moved_b = sum(float((trained.factors(n)[1] - start[n][1]).norm()) for n in pool.names)
        return moved_a, moved_b

    free_a, free_b = trained_from_fresh_pool()
    frozen_a, _ = trained_from_fresh_pool(freeze_a=True)
    _, prox_b = trained_from_fresh_pool(proximal_mu=1e4)
    assert free_a > 0 and frozen_a == 0.0
    assert prox_b < 0.5 * free_b
