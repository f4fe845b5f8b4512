"""The model-based augmenter's parts that need no model: parsing what a model writes, the cache,
and the configuration."""

import pytest

from fedprag.shared.config import ConfigError, load_config
from fedprag.shared.data.augment import ParsedPairs, complete, grounded, merge, parse_pairs, parse_written, views
from fedprag.shared.data.schema import Augmentation, Passage
from fedprag.shared.models.augmenter import AugmentCache, AugmentStats, CachedAugmentation


def test_question_and_answer_lines_are_paired_and_malformed_ones_counted():
    lines = [
        "Q: Who trained Ada Lorn?", "A: Bex Tal",
        "Q: Where did Ada Lorn grow up?",          # no answer line: dropped
        "Q: What does Ada Lorn play?", "A: the harp.",
        "A: an answer with no question",            # dropped
        "Question 4: When was Ada Lorn born?", "Answer 4: 1901",
        "Q: Who trained Ada Lorn?", "A: Bex Tal",  # repeated question: left out
        "Q: What is 1901?", "A: What is 1901?",     # answer equal to its question: dropped
        "some chatter the model added",
    ]
    parsed = parse_pairs("\n".join(lines))
    assert parsed.pairs == [("Who trained Ada Lorn?", "Bex Tal"), ("What does Ada Lorn play?", "the harp"),
                            ("When was Ada Lorn born?", "1901")]
    assert parsed.dropped == 3 and parsed.left_out == 1


def test_a_json_list_is_read_and_items_without_both_strings_dropped():
    text = ('Sure! Here they are:\n[{"question": "Who trained Ada Lorn?", "answer": "Bex Tal"}, '
            '{"Question": "Where is Quessa?", "Answer": "north"}, {"question": "No answer?"}, 7]')
    parsed = parse_pairs(text)
    assert parsed.pairs == [("Who trained Ada Lorn?", "Bex Tal"), ("Where is Quessa?", "north")]
    assert parsed.dropped == 2


def test_odd_output_neither_crashes_nor_hides_the_pairs():
    assert parse_pairs("Q: Who trained Ada [1]?\nA: Bex Tal").pairs == [("Who trained Ada [1]?", "Bex Tal")]
    assert parse_pairs('[{"question": "When was Ada born?", "answer": 1901}]').pairs == [("When was Ada born?", "1901")]
    assert parse_pairs("[" * 5000 + "]" * 5000) == ParsedPairs([], 0, 0)
    garbage = parse_pairs("[not json at all")
    assert garbage.pairs == [] and garbage.dropped == 0


def test_the_built_in_format_gives_the_rewrite_then_the_pairs():
    rewrite, parsed = parse_written(" Ada Lorn was raised in Quessa.\nQ: In which town was Ada Lorn raised?\n"
                                    "A: Quessa\nQ: Who trained Ada Lorn?\n")
    assert rewrite == "Ada Lorn was raised in Quessa."
    assert parsed.pairs == [("In which town was Ada Lorn raised?", "Quessa")] and parsed.dropped == 1


def test_the_owners_augmentation_wins_and_only_the_rest_is_written():
    passages = [Passage("a", 0, "Ada plays the harp."), Passage("b", 0, "Bex plays the oboe.")]
    owned = {"a": Augmentation("a", "r", [("What does Ada play?", "harp")])}
    asked: list[list[str]] = []

    def augment(todo):
        asked.append([p.passage_id for p in todo])
        return {p.passage_id: Augmentation(p.passage_id, p.text, []) for p in todo}

    out = complete(passages, owned, augment)
    assert asked == [["b"]] and out["a"] is owned["a"] and out["b"].qa == []


def test_views_merge_one_pair_per_fact_first_and_only_grounded_answers():
    text = "Ada plays the harp. Ada was born in 1901. Ada grew up in Quessa."
    assert views(text, 1) == [text] and len(views(text, 12)) == 6 and len(set(views(text, 12))) == 6
    first = ParsedPairs([("What does Ada play?", "harp"), ("Which instrument is Ada's?", "harp")], 0)
    second = ParsedPairs([("What does Ada play?", "harp"), ("When was Ada born?", "1901"),
                          ("Where did Ada grow up?", "Varnholm")], 1)
    merged = merge([grounded(first, text), grounded(second, text)], limit=3)
    assert grounded(ParsedPairs([("Born?", "19"), ("Who?", "ada")], 0), text).pairs == [("Who?", "ada")]
    assert merged.pairs == [("What does Ada play?", "harp"), ("When was Ada born?", "1901"),
                            ("Which instrument is Ada's?", "harp")]
    assert merged.dropped == 2 and merged.left_out == 1  # Varnholm invented; a repeated question


def test_the_cache_survives_a_reload_and_merges_its_parts(tmp_path, monkeypatch):
    monkeypatch.setattr("fedprag.shared.models.augmenter._COMPACT_AFTER", 3)
    cache = AugmentCache(tmp_path / "key")
    for i in range(5):
        cache.add({f"h{i}": CachedAugmentation(f"rewrite {i}", [(f"q{i}?", f"a{i}")], i, False)})
    assert len(list((tmp_path / "key").glob("part-*.parquet"))) <= 3
    reloaded = AugmentCache(tmp_path / "key")
    assert reloaded.entries == cache.entries and len(reloaded.entries) == 5


def test_stats_count_kept_dropped_and_verbatim_answers():
    stats = AugmentStats()
    stats.add(CachedAugmentation("r", [("What does Ada play?", "harp")], 2, False, left_out=3, ungrounded=1, written=4),
              fresh=True)
    summary = stats.summary()
    assert summary["pairs_kept"] == 1 and summary["pairs_dropped"] == 2 and summary["pairs_left_out"] == 3
    assert summary["verbatim_share"] == 0.75 and summary["generated"] == 1


@pytest.mark.parametrize("field,value", [("source", "templates"), ("prompt", "chatty"), ("pairs", "0"), ("views", "-1")])
def test_bad_augment_settings_are_refused_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=f"augment.{field}"):
        load_config(overrides={f"augment.{field}": value}, environ={})


@pytest.fixture()
def random_llama(random_llama_path):
    from fedprag.shared.models.loading import load_causal_lm

    return load_causal_lm(str(random_llama_path))


@pytest.mark.parametrize("chat_template", [None, "{% for m in messages %}<user>{{ m['content'] }}{% endfor %}<reply>"])
def test_any_causal_lm_writes_through_the_instruct_prompts_and_is_cached(random_llama, tmp_path, chat_template):
    """An untrained model writes nonsense: every passage still gets an augmentation (its text as the
    rewrite when it writes none), malformed pairs are counted, and a second run writes nothing."""
    from fedprag.shared.data.benchmark import BenchmarkSpec, make_benchmark
    from fedprag.shared.models.augment_config import AugmentConfig
    from fedprag.shared.models.augmenter import ModelAugmenter

    random_llama.tokenizer.chat_template = chat_template
    passages = make_benchmark(BenchmarkSpec(people=3, sites=1)).passages
    config = AugmentConfig(max_new_tokens=300, batch_size=2)  # more than half the 256 positions: capped
    first = ModelAugmenter(random_llama, config, tmp_path)
    assert first.style == "instruct" and first.new_tokens == 128
    written = first(passages)
    assert set(written) == {p.passage_id for p in passages} and all(a.rewrite for a in written.values())
    assert first.stats.generated == 3 and first.stats.passages == 3
    again = ModelAugmenter(random_llama, config, tmp_path)
    assert again(passages) == written and again.stats.generated == 0
