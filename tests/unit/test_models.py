"""Any Llama, Qwen or Mistral causal LM loads from a local path, gets LoRA on its FFN, and answers."""

import re
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from fedprag.shared.data import world
from fedprag.shared.data.augment import parse_written, sentences
from fedprag.shared.data.benchmark import training_people
from fedprag.shared.lora.layers import LowRank, applied, attach_lora
from fedprag.shared.lora.targets import FFN_TARGETS
from fedprag.shared.models.errors import ModelLoadError
from fedprag.shared.models.generate import generate_answers
from fedprag.shared.models.loading import load_causal_lm, model_digest
from fedprag.shared.models.tiny import numerics
from fedprag.shared.models.tiny.build import EOS, cached_path, train_tokenizer
from fedprag.shared.models.tiny.finish import FinishingExamples
from fedprag.shared.models.tiny.recipe import RECIPES, TinyFinish, TinyRecipe, recipe_named

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 2, "max_position_embeddings": 128}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["Question: Who trained Kara Lovel?\nAnswer: Zed Vin" + EOS] * 20, vocab_size=300)


@pytest.mark.parametrize("config_cls", [LlamaConfig, Qwen2Config, MistralConfig])
def test_families_load_from_a_path_and_answer_with_an_adapter(config_cls, tokenizer, tmp_path):
    torch.manual_seed(0)
    config = config_cls(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=tokenizer.eos_token_id, **SMALL)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    base = load_causal_lm(str(tmp_path))
    assert base.family == config.model_type and base.digest == model_digest(tmp_path)
    layers = attach_lora(base.model)
    assert len(layers) == len(FFN_TARGETS) * SMALL["num_hidden_layers"]
    adapter = {n: LowRank(torch.randn(1, 2, l.in_features), torch.randn(1, l.out_features, 2), 1.0) for n, l in layers.items()}
    with applied(layers, adapter):
        answers = generate_answers(base.model, base.tokenizer, ["Question: Who?\nAnswer:", "Question: x\nAnswer:"], 3)
    assert len(answers) == 2


def test_unsupported_family_and_missing_config_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_causal_lm(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ModelLoadError, match="'gpt2' is not supported"):
        load_causal_lm(str(tmp_path))


def test_recipe_hash_is_the_cache_key():
    assert TinyRecipe().digest() == TinyRecipe().digest()
    assert TinyRecipe(steps=5).digest() != TinyRecipe().digest()
    assert cached_path(RECIPES["default"]) != cached_path(RECIPES["small"])
    with pytest.raises(ValueError, match="model.recipe: unknown recipe 'huge'"):
        recipe_named("huge")


def test_a_finishing_recipe_is_keyed_by_its_base_and_its_stages():
    finish = TinyFinish(base=TinyRecipe())
    assert finish.digest() == TinyFinish(base=TinyRecipe()).digest()
    assert finish.digest() != TinyFinish(base=TinyRecipe(steps=5)).digest()
    assert finish.digest() != TinyFinish(base=TinyRecipe(), drill_steps=5).digest()
    assert finish.digest() != TinyFinish(base=TinyRecipe(), decay=True).digest()
    assert finish.digest() != TinyFinish(base=TinyRecipe(), mix_writing=0.1).digest()
    assert cached_path(RECIPES["default"]) != cached_path(RECIPES["reader"])
    chain, recipe = [], RECIPES["default"]
    while isinstance(recipe, TinyFinish):
        recipe = recipe.base
        chain.append(recipe)
    assert chain == [RECIPES["read"], RECIPES["annealed"], RECIPES["polished"], RECIPES["drilled"], RECIPES["reader"]]


def test_the_drill_asks_about_one_of_several_people_who_differ_only_by_name():
    examples = FinishingExamples(training_people(), TinyFinish(base=TinyRecipe()), EOS)
    for _ in range(50):
        prompt, completion = examples.lookup()
        context = prompt.split("Context:")[1]
        sentences = [s for s in context.split(". ") if s.strip()]
        assert 2 <= len(sentences) <= 6
        answer = completion.removesuffix(EOS).strip()
        assert answer in context and completion.endswith(EOS)
    kinds = [examples.mixed() for _ in range(400)]
    plain = [c for p, c in kinds if not p]
    assert 0.05 < len(plain) / len(kinds) < 0.3  # passage language modelling, 15% of the mix


def test_the_writing_task_asks_once_about_each_stated_fact_in_augmentation_phrasings_only():
    recipe = TinyFinish(base=TinyRecipe(), mix_reading=0.0, mix_lookup=0.0, mix_writing=1.0)
    examples = FinishingExamples(training_people(), recipe, EOS)
    phrasings = [re.compile(re.escape(t).replace(re.escape("{n}"), ".+") + "$")
                 for forms in world.AUGMENT_TEMPLATES.values() for t in forms]
    for _ in range(50):
        prompt, completion = examples.mixed()
        passage = prompt.removeprefix("Passage: ").split("\n")[0]
        rewrite, parsed = parse_written(completion.removesuffix(EOS))
        stated = len(sentences(passage))
        assert 2 <= stated <= len(world.ATTRIBUTES) and len(sentences(rewrite)) == stated
        assert len(parsed.pairs) == stated and all(answer in passage for _, answer in parsed.pairs)
        assert all(any(p.match(q) for p in phrasings) for q, _ in parsed.pairs)  # never a test phrasing


def test_tiny_build_is_deterministic_and_cached(tmp_path):
    from fedprag.shared.models.tiny.build import build_tiny

    micro = TinyRecipe(name="micro", steps=3, batch_size=4, layers=1, hidden_size=32, heads=2,
                       intermediate_size=64, vocab_size=300)
    first = build_tiny(micro, cache_root=tmp_path / "a", show_progress=False)
    second = build_tiny(micro, cache_root=tmp_path / "b", show_progress=False)
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    stamp = (first / "recipe.json").stat().st_mtime_ns
    assert build_tiny(micro, cache_root=tmp_path / "a", show_progress=False) == first
    assert (first / "recipe.json").stat().st_mtime_ns == stamp  # cached: not rebuilt
    micro_finish = TinyFinish(base=micro, name="micro", drill_steps=2, mix_steps=2, batch_size=2)
    finished = build_tiny(micro_finish, cache_root=tmp_path / "a", show_progress=False)
    assert finished != first and (first / "recipe.json").stat().st_mtime_ns == stamp  # base reused
    assert (finished / "model.safetensors").read_bytes() != (first / "model.safetensors").read_bytes()
    stamp = (finished / "recipe.json").stat().st_mtime_ns
    polished = build_tiny(TinyFinish(base=micro_finish, name="micro", drill_steps=0, mix_steps=2, batch_size=2, decay=True),
                          cache_root=tmp_path / "a", show_progress=False)
    assert polished != finished and (finished / "recipe.json").stat().st_mtime_ns == stamp  # a finish finished again
    assert load_causal_lm(str(finished)).model.config.num_hidden_layers == 1


@pytest.mark.environment  # sets environment variables (tests/phases.py)
@pytest.mark.skipif(not numerics.pinnable(), reason="portable numerics need a CPU with AVX2")
def test_a_portable_build_trains_under_pinned_numerics_whatever_the_caller_runs(tmp_path, monkeypatch):
    """The build's child process runs torch's AVX2 kernels on 2 threads even where the caller asked
    for others, and the recipe's numerics are part of its digest and its recipe.json."""
    import json

    from fedprag.shared.models.tiny.build import build_tiny

    micro = TinyRecipe(name="micro", steps=2, batch_size=4, layers=1, hidden_size=32, heads=2, intermediate_size=64,
                       vocab_size=300, numerics="portable")
    assert micro.digest() != replace(micro, numerics="native").digest()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    built = build_tiny(micro, cache_root=tmp_path, show_progress=False)
    metrics = json.loads((built / "metrics.json").read_text())
    assert (metrics["cpu_capability"], metrics["threads"]) == ("AVX2", 2)
    assert json.loads((built / "recipe.json").read_text())["numerics"] == "portable"
    assert "numerics" not in replace(micro, numerics="native").describe()  # shipped native digests hold


def test_a_recipe_with_unknown_numerics_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="recipe.numerics: expected one of native, portable, got 'fast'"):
        TinyRecipe(numerics="fast")
    with pytest.raises(ValueError, match="recipe.numerics"):
        TinyFinish(base=TinyRecipe(), numerics="fast")


def test_the_build_check_reports_reading_per_attribute(monkeypatch):
    """A reader that can copy only years scores 1 on years, 0 elsewhere, and 1/6 overall."""
    import re

    from fedprag.shared.data import world
    from fedprag.shared.models.tiny import build

    def years_only(model, tokenizer, prompts):
        return [m.group(0) if "born?" in p and (m := re.search(r"\b1[89]\d\d\b", p)) else "" for p in prompts]

    monkeypatch.setattr(build, "generate_answers", years_only)
    metrics = build.held_out_check(model=None, tokenizer=None, people=5)
    assert metrics["em_with_passage_year"] == 1.0
    assert all(metrics[f"em_with_passage_{a}"] == 0.0 for a in world.ATTRIBUTES if a != "year")
    assert metrics["em_with_passage"] == pytest.approx(1 / len(world.ATTRIBUTES))
    assert metrics["em_closed_book"] == 0.0 and metrics["em_closed_book_year"] == 0.0
