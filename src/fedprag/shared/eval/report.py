"""The harness's results: one row per method, written as JSON and as a Markdown table."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from fedprag.shared.io import atomic_write_text


@dataclass
class KindScore:
    em: float
    f1: float
    n: int


@dataclass
class MethodResult:
    method: str
    scores: dict[str, KindScore]
    encode_seconds_per_passage: float
    stored_bytes: int
    latency_ms_p50: float
    latency_ms_p95: float
    peak_memory_mb: float
    predictions: list[str] = field(default_factory=list)  # per question, in dataset order


@dataclass
class Report:
    machine: dict[str, object]
    base_model: str
    base_model_digest: str
    passages: int
    questions: int
    top_k: int
    recall_at_k: dict[str, float]
    results: list[MethodResult] = field(default_factory=list)
    complete_at_k: dict[str, float] = field(default_factory=dict)
    """Per question kind, the share of questions whose gold passages are all in the top k."""
    hops: int = 1
    """Retrieval hops (2: a bridge passage from the top passage's sentences)."""
    augmentation: dict[str, object] = field(default_factory=dict)
    """Where the encoding data came from: passages with the dataset's own augmentation, and what
    the augmenter wrote for the rest (pairs kept and dropped, answers found verbatim)."""

    def kinds(self) -> list[str]:
        order = ["single", "ood", "multihop"]
        found = {k for r in self.results for k in r.scores}
        return [k for k in order if k in found] + sorted(found - set(order))

    def to_markdown(self) -> str:
        kinds = self.kinds()
        head = ["method"] + [f"{k} EM" for k in kinds] + [f"{k} F1" for k in kinds] + \
               ["enc s/passage", "stored bytes", "p50 ms", "p95 ms", "peak MB"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.results:
            cells = [r.method] + [f"{r.scores[k].em:.3f}" if k in r.scores else "–" for k in kinds] + \
                    [f"{r.scores[k].f1:.3f}" if k in r.scores else "–" for k in kinds] + \
                    [f"{r.encode_seconds_per_passage:.3f}", f"{r.stored_bytes:,}", f"{r.latency_ms_p50:.1f}",
                     f"{r.latency_ms_p95:.1f}", f"{r.peak_memory_mb:.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
        counts = ", ".join(f"{k}: {self.results[0].scores[k].n}" for k in kinds) if self.results else ""
        recall = ", ".join(f"{k} {v:.3f}" for k, v in self.recall_at_k.items())
        complete = ", ".join(f"{k} {v:.3f}" for k, v in self.complete_at_k.items())
        machine = ", ".join(f"{k} {v}" for k, v in self.machine.items())
        return "\n".join([
            (f"Base model `{self.base_model}` ({self.base_model_digest}); {self.passages} passages, "
             f"{self.questions} questions ({counts}); retrieval{' with a bridge hop' if self.hops == 2 else ''} "
             f"recall@{self.top_k}: {recall}; "
             f"questions with every gold passage in the top {self.top_k}: {complete}."),
            "",
            self.augmentation_line(),
            "",
            *lines,
            "",
            f"Machine: {machine}.",
        ]) + "\n"

    def augmentation_line(self) -> str:
        """One sentence on where the encoding data came from (``*_oracle`` rows: the dataset's file)."""
        a = self.augmentation
        if not a:
            return "Augmentation: not recorded."
        own = f"{a.get('from_dataset', 0)} of {self.passages} passages had the dataset's own augmentation"
        if not a.get("passages"):
            return f"Augmentation: {own}; nothing else was encoded with an augmentation."
        if a.get("source") != "model":
            return f"Augmentation: {own}; the rest by the {a.get('source')} rule."
        return (f"Augmentation: {own}; the model-based augmenter ({a['style']} prompt, writer `{a['writer']}`, "
                f"{a['views']} orderings of each passage) wrote the rest, {a['seconds'] / max(1, a['passages']):.2f} s "
                f"per passage. It wrote {a['pairs_written']} well-formed QA pairs ({a['pairs_dropped']} malformed or "
                f"ungrounded ones dropped); {a['verbatim_share']:.1%} of their answers occur verbatim in the passage. "
                f"Kept: {a['pairs_kept']} (one per distinct answer first, at most {a['cap']} per passage"
                f"{', answers in the passage only' if a['grounded'] else ''}); {a['cloze_fallbacks']} passages got none "
                "and fell back to cloze pairs. "
                "Rows named `*_oracle` encode with the dataset's own augmentation file instead.")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def write(self, out_dir: str | Path, stem: str = "eval") -> tuple[Path, Path]:
        """Write ``<stem>.json`` and ``<stem>.md`` atomically; returns their paths."""
        out = Path(out_dir)
        json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
        atomic_write_text(json_path, self.to_json())
        atomic_write_text(md_path, self.to_markdown())
        return json_path, md_path
