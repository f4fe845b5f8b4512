"""The model-based augmenter: a language model writes each passage's rewrite and QA pairs.

This is PRAG's recipe for encoding data: the model that will answer also writes what its
adapters are trained on, so a corpus needs no hand-written augmentation file. Two prompt styles:

* ``builtin``: the format the built-in model is pretrained to write (:func:`prompts.augment_request`):
  one generation gives the rewrite, then ``Q:``/``A:`` lines;
* ``instruct``: for any other Hugging Face causal LM, two instructions adapted from PRAG's, one for
  the rewrite and one for a JSON list of QA pairs, through the tokenizer's chat template when it
  has one.

Either way the output is parsed leniently (:func:`fedprag.shared.data.augment.parse_pairs`) and
malformed pairs are dropped and counted. Results are cached on disk by passage hash under a key
made of the model digest and every setting that changes what is written, so a passage is written
once per model. Logs carry counts only, never passage text.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from fedprag.shared import prompts
from fedprag.shared.data.augment import (
    Augmenter,
    ParsedPairs,
    cloze_augmentation,
    cloze_augmenter,
    grounded,
    merge,
    parse_pairs,
    parse_written,
    views,
)
from fedprag.shared.data.schema import Augmentation, Passage
from fedprag.shared.io import atomic_path
from fedprag.shared.log import get_logger
from fedprag.shared.models.augment_config import AugmentConfig
from fedprag.shared.models.generate import generate_answers
from fedprag.shared.models.loading import BaseModel, load_causal_lm

log = get_logger(__name__)

# Bump when the prompts or the parsing change what is cached.
AUGMENTER_VERSION = 1
_COMPACT_AFTER = 32  # cache part files before they are merged into one
_CACHE_EVERY = 64  # passages written between cache writes
_PROMPT_TOKENS = 96  # room for a prompt's own words around the passage
BUILTIN_VIEWS = 12  # orderings per passage for the built-in writer (docs/experiments.md §8.2)

REWRITE_INSTRUCTION = (
    "Rewrite the passage below in other words. Keep every name, place, number and other key detail "
    "exactly as written; change only how it is said.\n\nPassage: {passage}"
)
QA_INSTRUCTION = (
    "Write {pairs} different questions that the passage below answers, each with its answer copied "
    "from the passage. Reply with a JSON list only, in this form: "
    '[{{"question": "...", "answer": "..."}}]\n\nPassage: {passage}'
)


@dataclass
class AugmentStats:
    """What the augmenter wrote: passages, pairs kept and dropped, and how faithful the answers are."""

    passages: int = 0
    generated: int = 0  # written now; the rest came from the cache
    pairs_kept: int = 0
    pairs_dropped: int = 0  # malformed, or (grounded) with an answer not in the passage
    pairs_left_out: int = 0  # well formed, but a question asked again or past augment.pairs
    pairs_written: int = 0  # well formed, each prompt's distinct questions, before grounding and merging
    pairs_ungrounded: int = 0  # of those, with an answer that is not in the passage
    cloze_fallbacks: int = 0  # passages for which no pair survived: they got the cloze rule's pairs
    truncated: int = 0  # passages cut to fit the model's context
    seconds: float = 0.0

    def add(self, entry: CachedAugmentation, fresh: bool) -> None:
        self.passages += 1
        self.generated += int(fresh)
        self.pairs_kept += len(entry.qa)
        self.pairs_dropped += entry.dropped
        self.pairs_left_out += entry.left_out
        self.pairs_ungrounded += entry.ungrounded
        self.pairs_written += entry.written
        self.cloze_fallbacks += int(entry.fallback)
        self.truncated += int(entry.truncated)

    def summary(self) -> dict[str, float]:
        """The counts, and the share of well-formed written answers that occur verbatim in their
        passage (before any grounding filter)."""
        verbatim = 1 - self.pairs_ungrounded / self.pairs_written if self.pairs_written else 0.0
        return {**asdict(self), "verbatim_share": verbatim}


@dataclass(frozen=True)
class CachedAugmentation:
    """One passage's written augmentation as cached: the rewrite, the kept pairs, the dropped count."""

    rewrite: str
    qa: list[tuple[str, str]]
    dropped: int
    truncated: bool
    left_out: int = 0
    ungrounded: int = 0  # well-formed pairs whose answer is not in the passage
    written: int = 0  # well-formed pairs, each prompt's distinct questions
    fallback: bool = False  # no written pair survived: ``qa`` is the cloze rule's


Written = tuple[str, ParsedPairs, bool]
"""What one prompt about one view of a passage gave: the rewrite, the pairs, whether it was cut."""


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class AugmentCache:
    """Written augmentations on disk by passage hash, in Parquet parts under one key's folder.

    Each write adds one part atomically. Past :data:`_COMPACT_AFTER` parts, the parts are read
    again, merged with what this process holds into one new part, and only the parts read are
    deleted, so entries another process wrote meanwhile survive. A part that disappears under a
    concurrent merge, or that cannot be read, is skipped; its passages are written again.
    """

    _SCHEMA = pa.schema([("passage_hash", pa.string()), ("rewrite", pa.string()), ("questions", pa.list_(pa.string())),
                         ("answers", pa.list_(pa.string())), ("dropped", pa.int32()), ("truncated", pa.bool_()),
                         ("left_out", pa.int32()), ("ungrounded", pa.int32()), ("written", pa.int32()),
                         ("fallback", pa.bool_())])

    def __init__(self, folder: Path):
        self.folder = folder
        self.entries: dict[str, CachedAugmentation] = {}
        self._read(self._parts())

    def _parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet")) if self.folder.is_dir() else []

    def _read(self, parts: list[Path]) -> list[Path]:
        """Load ``parts`` into :attr:`entries`; returns the parts that were read."""
        read = []
        for part in parts:
            try:
                rows = pq.read_table(part, schema=self._SCHEMA).to_pylist()
            except (OSError, pa.ArrowInvalid):  # gone under a concurrent merge, or damaged
                continue
            read.append(part)
            for row in rows:
                self.entries.setdefault(row["passage_hash"], CachedAugmentation(
                    row["rewrite"], list(zip(row["questions"], row["answers"])), row["dropped"], row["truncated"],
                    row["left_out"], row["ungrounded"], row["written"], row["fallback"]))
        return read

    def _write(self, entries: dict[str, CachedAugmentation]) -> None:
        table = pa.Table.from_pylist([
            {"passage_hash": h, "rewrite": e.rewrite, "questions": [q for q, _ in e.qa],
             "answers": [a for _, a in e.qa], "dropped": e.dropped, "truncated": e.truncated,
             "left_out": e.left_out, "ungrounded": e.ungrounded, "written": e.written, "fallback": e.fallback}
            for h, e in entries.items()], schema=self._SCHEMA)
        with atomic_path(self.folder / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet") as tmp:
            pq.write_table(table, tmp)

    def add(self, new: dict[str, CachedAugmentation]) -> None:
        """Keep ``new`` in memory and on disk."""
        self.entries.update(new)
        parts = self._parts()
        if len(parts) + 1 > _COMPACT_AFTER:
            read = self._read(parts)
            self._write(self.entries)
            for part in read:
                part.unlink(missing_ok=True)
        else:
            self._write(new)


def _taught_to_write(recipe: object) -> bool:
    """Whether a built-in model's recipe (``recipe.json``), or one it was finished from, trained
    the writing task."""
    if isinstance(recipe, dict):
        return bool(recipe.get("mix_writing")) or _taught_to_write(recipe.get("base"))
    return False


def _style(config: AugmentConfig, writer: BaseModel) -> str:
    """The prompt style ``augment.prompt`` names; for ``auto``, ``builtin`` when the writer is a
    built-in model that was taught to write, else ``instruct``."""
    if config.prompt != "auto":
        return config.prompt
    recipe = writer.path / "recipe.json"
    if recipe.is_file():
        if _taught_to_write(json.loads(recipe.read_text())):
            return "builtin"
        log.warning("augment.untaught_writer", writer=writer.path.name,
                    advice="this built-in model never learned to write QA pairs; set augment.model to one that did "
                           "(tiny) or augment.source = 'cloze'")
    return "instruct"


class ModelAugmenter:
    """An :data:`~fedprag.shared.data.augment.Augmenter` that asks ``writer`` to write each
    passage's augmentation, in batches, caching results under ``cache_root``."""

    def __init__(self, writer: BaseModel, config: AugmentConfig, cache_root: Path, show_progress: bool = False):
        self.writer, self.config, self.show_progress = writer, config, show_progress
        self.style = _style(config, writer)
        self.views = config.views or (BUILTIN_VIEWS if self.style == "builtin" else 1)
        self.context = getattr(writer.model.config, "max_position_embeddings", None) or 1 << 20
        self.new_tokens = min(config.max_new_tokens, self.context // 2)  # a short-context model still reads
        template = getattr(writer.tokenizer, "chat_template", None) or ""
        key = json.dumps({"version": AUGMENTER_VERSION, "model": writer.digest, "style": self.style,
                          "chat_template": hashlib.sha256(str(template).encode()).hexdigest(),
                          "pairs": config.pairs, "views": self.views, "grounded": config.grounded,
                          "max_new_tokens": self.new_tokens, "batch_size": config.batch_size}, sort_keys=True)
        self.cache = AugmentCache(Path(cache_root) / hashlib.sha256(key.encode()).hexdigest()[:24])
        self.stats = AugmentStats()

    def __call__(self, passages: Sequence[Passage]) -> dict[str, Augmentation]:
        started = time.perf_counter()
        hashes = [text_hash(p.text) for p in passages]
        todo = list({h: p for h, p in zip(hashes, passages) if h not in self.cache.entries}.items())
        with tqdm(total=len(todo), desc="augment", unit="passage", disable=not self.show_progress) as bar:
            for start in range(0, len(todo), _CACHE_EVERY):  # kept as it goes: an interrupted run resumes
                chunk = todo[start:start + _CACHE_EVERY]
                self.cache.add(self._write_passages(chunk))
                bar.update(len(chunk))
        fresh = {h for h, _ in todo}
        out = {}
        for h, p in zip(hashes, passages):
            out[p.passage_id] = Augmentation(p.passage_id, self.cache.entries[h].rewrite or p.text,
                                             list(self.cache.entries[h].qa))
        for h in dict.fromkeys(hashes):
            self.stats.add(self.cache.entries[h], h in fresh)
        self.stats.seconds += time.perf_counter() - started
        log.info("augment.done", passages=len(passages), generated=len(fresh), **{
            k: v for k, v in self.stats.summary().items() if k in ("pairs_kept", "pairs_dropped", "cloze_fallbacks")})
        return out

    def _write_passages(self, chunk: list[tuple[str, Passage]]) -> dict[str, CachedAugmentation]:
        """Every view of each (text hash, passage), written in batches, then joined per passage."""
        parts = [(h, view) for h, p in chunk for view in views(p.text, self.views)]
        written: list[Written] = []
        for start in range(0, len(parts), self.config.batch_size):
            written += self._write([view for _, view in parts[start:start + self.config.batch_size]])
        by_passage: dict[str, list[Written]] = {}
        for (h, _), view in zip(parts, written):
            by_passage.setdefault(h, []).append(view)
        return {h: self._joined(by_passage[h], p) for h, p in chunk}

    def _joined(self, written: list[Written], passage: Passage) -> CachedAugmentation:
        """A passage's augmentation from its views': the first rewrite written, and the pairs (only
        those whose answer is in the passage, when grounded) merged up to ``augment.pairs``. When
        none survives, the cloze rule's pairs, so that the passage still trains (and is counted)."""
        parsed = [pairs for _, pairs, _ in written]
        on_passage = [grounded(p, passage.text) for p in parsed]
        merged = merge(on_passage if self.config.grounded else parsed, self.config.pairs)
        rewrite = next((r for r, _, _ in written if r), "")
        fallback = not merged.pairs
        return CachedAugmentation(
            rewrite, cloze_augmentation(passage).qa if fallback else merged.pairs, merged.dropped,
            any(cut for _, _, cut in written), merged.left_out,
            ungrounded=sum(len(p.pairs) - len(g.pairs) for p, g in zip(parsed, on_passage)),
            written=sum(len(p.pairs) for p in parsed), fallback=fallback)

    def _fit(self, texts: list[str]) -> tuple[list[str], list[bool]]:
        """Each passage cut (by tokens) so that its prompt and the new tokens fit the model."""
        budget = self.context - self.new_tokens - _PROMPT_TOKENS
        tokenizer = self.writer.tokenizer
        out, cut = [], []
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            out.append(text if len(ids) <= budget else tokenizer.decode(ids[:max(budget, 1)]))
            cut.append(len(ids) > budget)
        return out, cut

    def _generate(self, prompt_texts: list[str]) -> list[str]:
        tokenizer = self.writer.tokenizer
        if self.style == "instruct" and getattr(tokenizer, "chat_template", None):
            prompt_texts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                          add_generation_prompt=True) for t in prompt_texts]
        return generate_answers(self.writer.model, tokenizer, prompt_texts, max_new_tokens=self.new_tokens)

    def _write(self, texts: list[str]) -> list[Written]:
        """One prompt (or, instruct, one rewrite and one QA prompt) per text: its rewrite, its pairs,
        and whether it was cut to fit."""
        fitted, cut = self._fit(texts)
        if self.style == "builtin":
            written = [parse_written(out)
                       for out in self._generate([prompts.augment_request(t) for t in fitted])]
        else:
            rewrites = self._generate([REWRITE_INSTRUCTION.format(passage=t) for t in fitted])
            pairs: list[ParsedPairs] = [
                parse_pairs(out)
                for out in self._generate([QA_INSTRUCTION.format(passage=t, pairs=self.config.pairs) for t in fitted])]
            written = list(zip((r.strip() for r in rewrites), pairs))
        return [(rewrite, parsed, c) for (rewrite, parsed), c in zip(written, cut)]


def make_augmenter(config: AugmentConfig, base: BaseModel, cache_root: Path, show_progress: bool = False) -> Augmenter:
    """The augmenter ``config`` chooses; the model-based one writes with ``base`` unless
    ``augment.model`` names another model."""
    if config.source == "cloze":
        return cloze_augmenter
    writer = load_causal_lm(config.model, show_progress=show_progress) if config.model else base
    return ModelAugmenter(writer, config, cache_root, show_progress)


def augmenter_summary(augment: Augmenter) -> dict[str, object]:
    """What an augmenter did so far, for reports: the model-based one's counts, or its source."""
    if isinstance(augment, ModelAugmenter):
        return {"source": "model", "style": augment.style, "writer": augment.writer.path.name,
                "views": augment.views, "cap": augment.config.pairs, "grounded": augment.config.grounded,
                **augment.stats.summary()}
    return {"source": "cloze" if augment is cloze_augmenter else "other"}
