"""Encoding-time augmentation of a passage: one rewrite and QA pairs (PRAG's data format).

Where a passage's augmentation comes from, first match wins:

1. the owner's own: a dataset's ``augmentations.parquet``, or QA pairs supplied at ingest;
2. an augmenter: the model-based one (:class:`fedprag.shared.models.augmenter.ModelAugmenter`,
   the default), which asks a language model to write them, or the cloze rule
   (:func:`cloze_augmentation`), only when chosen explicitly (``augment.source = "cloze"``).

This module holds what needs no model: the cloze rule, the parser for what a model writes, and
:func:`complete`, which fills in what the owner did not supply.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from fedprag.shared.data.schema import Augmentation, Dataset, Passage

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# "Q: ...", "Question 2: ...", "1. Q: ..." and the same for answers, one per line.
_QUESTION_LINE = re.compile(r"^\s*(?:\d+[.)]\s*)?(?:q|question)\s*\d*\s*[:.)-]\s*(?P<text>.*\S)\s*$", re.IGNORECASE)
_ANSWER_LINE = re.compile(r"^\s*(?:\d+[.)]\s*)?(?:a|answer)\s*\d*\s*[:.)-]\s*(?P<text>.*\S)\s*$", re.IGNORECASE)
MAX_QUESTION_CHARS = 300
MAX_ANSWER_CHARS = 120

Augmenter = Callable[[Sequence[Passage]], dict[str, Augmentation]]
"""Writes an augmentation for each passage it is given, keyed by passage id."""


def sentences(text: str) -> list[str]:
    """``text`` split after each sentence end (., ! or ? followed by whitespace)."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def views(text: str, count: int) -> list[str]:
    """Up to ``count`` distinct orderings of ``text``'s sentences: as written, then rotated, then
    the same rotations of the reversed order; each rotation moves the start by an equal share."""
    found = sentences(text)
    if count <= 1 or len(found) < 2:
        return [text]
    turns = min(count, 2 * len(found))
    forward = (turns + 1) // 2
    orders = [found[k:] + found[:k] for k in dict.fromkeys(i * len(found) // forward for i in range(forward))]
    backward = found[::-1]
    orders += [backward[k:] + backward[:k] for k in dict.fromkeys(i * len(found) // (turns - forward)
                                                                   for i in range(turns - forward))]
    return list(dict.fromkeys(" ".join(order) for order in orders))


def cloze_augmentation(passage: Passage) -> Augmentation:
    """Rewrite = the sentences in reverse order; QA = each sentence with its last word asked for."""
    parts = sentences(passage.text)
    qa = []
    for sentence in parts:
        words = sentence.rstrip(".!?").split()
        if len(words) >= 2:
            qa.append((f"Complete: {' '.join(words[:-1])} ...?", words[-1]))
    while len(qa) < 3:  # very short passages: ask for the whole passage's last word repeatedly
        words = passage.text.split()
        qa.append((f"Complete: {' '.join(words[:-1]) or words[0]} ...?", words[-1].rstrip(".!?")))
    return Augmentation(passage.passage_id, " ".join(reversed(parts)), qa)


def cloze_augmenter(passages: Sequence[Passage]) -> dict[str, Augmentation]:
    """The cloze rule as an :data:`Augmenter`."""
    return {p.passage_id: cloze_augmentation(p) for p in passages}


@dataclass(frozen=True)
class ParsedPairs:
    """The QA pairs read from a model's output, how many malformed ones were dropped, and how many
    well-formed ones were left out: a question asked again, or a pair past the cap."""

    pairs: list[tuple[str, str]]
    dropped: int
    left_out: int = 0


def _clean_answer(text: str) -> str:
    return text.strip().strip("\"'").rstrip(".").strip()


def _distinct(pairs: list[tuple[str, str]], limit: int | None = None) -> list[tuple[str, str]]:
    """``pairs`` without a question asked again (ignoring case), at most ``limit`` of them."""
    kept: list[tuple[str, str]] = []
    seen: set[str] = set()
    for question, answer in pairs:
        if question.lower() not in seen and (limit is None or len(kept) < limit):
            seen.add(question.lower())
            kept.append((question, answer))
    return kept


def merge(parts: list[ParsedPairs], limit: int) -> ParsedPairs:
    """Several prompts' pairs as one passage's, at most ``limit``: first one pair per distinct
    answer (so that as many facts as possible are asked about), then the rest in order. A repeated
    question, or a pair past the limit, is left out and counted."""
    written = [pair for part in parts for pair in part.pairs]
    first_per_answer = {a.lower(): (q, a) for q, a in reversed(written)}
    ordered = [pair for pair in written if first_per_answer.get(pair[1].lower()) == pair]
    ordered += [pair for pair in written if first_per_answer.get(pair[1].lower()) != pair]
    kept = _distinct(ordered, limit)
    left_out = sum(len(p.pairs) + p.left_out for p in parts) - len(kept)
    return ParsedPairs(kept, sum(p.dropped for p in parts), left_out)


def in_passage(answer: str, passage: str) -> bool:
    """Whether ``answer`` occurs in ``passage`` as whole words (ignoring case): "19" is not in "1901"."""
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", passage, re.IGNORECASE) is not None


def grounded(parsed: ParsedPairs, passage: str) -> ParsedPairs:
    """Only the pairs whose answer occurs in ``passage`` (:func:`in_passage`); the rest are dropped."""
    kept = [(q, a) for q, a in parsed.pairs if in_passage(a, passage)]
    return ParsedPairs(kept, parsed.dropped + len(parsed.pairs) - len(kept), parsed.left_out)


def _keep(raw: list[tuple[str, str]]) -> ParsedPairs:
    """Drop pairs with an empty or overlong question or answer, or an answer equal to its
    question; leave out a question asked again."""
    formed: list[tuple[str, str]] = []
    for question, answer in raw:
        question, answer = question.strip(), _clean_answer(answer)
        if (question and answer and len(question) <= MAX_QUESTION_CHARS and len(answer) <= MAX_ANSWER_CHARS
                and answer.lower() != question.lower()):
            formed.append((question, answer))
    unique = _distinct(formed)
    return ParsedPairs(unique, len(raw) - len(formed), len(formed) - len(unique))


def _json_pairs(text: str) -> list[tuple[str, str]] | None:
    """Pairs from a JSON list of ``{"question": ..., "answer": ...}`` objects in ``text``, or
    ``None`` when ``text`` holds no list with an object in it. An item without a question and an
    answer (a string or a number) becomes an empty pair."""
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end <= start:
        return None
    try:
        items = json.loads(text[start:end + 1])
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(items, list) or not any(isinstance(item, dict) for item in items):
        return None
    pairs = []
    for item in items:
        fields = {str(k).lower(): v for k, v in item.items()} if isinstance(item, dict) else {}
        question, answer = fields.get("question"), fields.get("answer")
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        ok = isinstance(question, str) and isinstance(answer, str)
        pairs.append((question, answer) if ok else ("", ""))
    return pairs


def _line_pairs(text: str) -> list[tuple[str, str]]:
    """Pairs from ``Q:``/``A:`` lines: each question with the answer line right after it. A
    question with no answer, or an answer with no question, becomes an empty pair."""
    pairs: list[tuple[str, str]] = []
    question: str | None = None
    for line in text.splitlines():
        if match := _QUESTION_LINE.match(line):
            if question is not None:
                pairs.append(("", ""))
            question = match["text"]
        elif match := _ANSWER_LINE.match(line):
            pairs.append((question, match["text"]) if question is not None else ("", ""))
            question = None
    if question is not None:
        pairs.append(("", ""))
    return pairs


def parse_pairs(text: str) -> ParsedPairs:
    """The QA pairs a model wrote, as a JSON list of question/answer objects or as ``Q:``/``A:``
    lines, with malformed pairs dropped and repeats left out, each counted (see :func:`_keep`)."""
    raw = _json_pairs(text)
    return _keep(raw if raw is not None else _line_pairs(text))


def parse_written(text: str) -> tuple[str, ParsedPairs]:
    """The rewrite and QA pairs in what the built-in model writes after its rewrite cue: the
    rewrite up to the first question line, then the pairs."""
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if _QUESTION_LINE.match(line)), len(lines))
    return " ".join(line.strip() for line in lines[:first]).strip(), parse_pairs("\n".join(lines[first:]))


def complete(passages: Sequence[Passage], supplied: Mapping[str, Augmentation],
             augment: Augmenter) -> dict[str, Augmentation]:
    """Each passage's augmentation by id: the owner's where ``supplied``, else ``augment``'s."""
    missing = [p for p in passages if p.passage_id not in supplied]
    written = augment(missing) if missing else {}
    return {p.passage_id: supplied.get(p.passage_id) or written[p.passage_id] for p in passages}


def dataset_augmentations(dataset: Dataset, augment: Augmenter,
                          passages: Sequence[Passage] | None = None) -> dict[str, Augmentation]:
    """Each of ``passages`` (default: all the dataset's) by id: the dataset's own augmentation
    where it has one, else ``augment``'s."""
    return complete(dataset.passages if passages is None else passages, dataset.augmentations, augment)


def own_augmentations(dataset: Dataset, use_dataset: bool) -> Dataset:
    """``dataset`` as encoding sees it: with its own augmentation file, or (``augment.use_dataset
    = false``) without it, so that the augmenter writes for every passage."""
    return dataset if use_dataset else dataclasses.replace(dataset, augmentations={})
