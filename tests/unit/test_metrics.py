"""Answer normalisation and scoring match the SQuAD/HotpotQA conventions users compare against."""

import pytest

from fedprag.shared.metrics import exact_match, normalize_answer, token_f1


@pytest.mark.parametrize("raw, normal", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  a   cello ", "cello"),
    ("An apple, the pear.", "apple pear"),
    ("1923", "1923"),
    ("Quellix-Works", "quellixworks"),
    ("THE", ""),
])
def test_normalisation(raw, normal):
    assert normalize_answer(raw) == normal


def test_exact_match_uses_normalisation_and_any_gold():
    assert exact_match("the Harp.", ["harp"]) == 1.0
    assert exact_match("harp", ["violin", "Harp"]) == 1.0
    assert exact_match("harps", ["harp"]) == 0.0


def test_token_f1_partial_overlap():
    assert token_f1("Quellix Works", ["Quellix Works"]) == 1.0
    assert token_f1("Quellix", ["Quellix Works"]) == pytest.approx(2 / 3)
    assert token_f1("nothing shared", ["Quellix Works"]) == 0.0
    assert token_f1("", ["the"]) == 1.0  # both normalise to empty
