"""The query path's last step: a batch of questions in, a batch of answers out, in one forward per token.

:class:`QueryEngine` takes questions and each one's :class:`~fedprag.shared.methods.base.Routing`
(retrieved passages, or expert weights blended by the sites), asks the method's model for the
prompts and one batched adapter, sets that adapter on the base model's LoRA layers and generates
every answer in one batched greedy decode. Requests with different adapters share the forward
pass; nothing is merged into the base weights and nothing is reloaded. The evaluation harness
answers through it, and every serving replica holds one.

:class:`PerRequestMerge` serves a method the way PRAG is published: each request's adapter merged
into the base weights, one request at a time (the serving benchmark's baseline).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

from fedprag.shared.lora.layers import Adapter, LoRALinear, applied, attach_lora, merged
from fedprag.shared.methods.base import MethodModel, Routing
from fedprag.shared.models.generate import MAX_NEW_TOKENS, generate_answers
from fedprag.shared.models.loading import BaseModel


class PerRequestMerge(MethodModel):
    """``model`` answered one request at a time, its adapter merged into the base weights (PEFT's
    merge and unmerge), as PRAG serves: no two requests with different adapters share a forward."""

    def __init__(self, model: MethodModel):
        self.model, self.name = model, f"{model.name}_merge"

    def prompts(self, questions: Sequence[str], routings: Sequence[Routing]) -> list[str]:
        return self.model.prompts(questions, routings)

    def adapter(self, routings: Sequence[Routing]) -> Adapter | None:
        return self.model.adapter(routings)


class QueryEngine:
    """A base model with LoRA layers attached, answering batches under any method's model.

    One engine serves one batch at a time: the adapter is set on the layers for the batch.
    """

    def __init__(self, base: BaseModel, layers: Mapping[str, LoRALinear] | None = None):
        self.base = base
        self.layers = layers if layers is not None else attach_lora(base.model)

    def answer(self, model: MethodModel, questions: Sequence[str], routings: Sequence[Routing],
               max_new_tokens: int = MAX_NEW_TOKENS, min_new_tokens: int = 0) -> list[str]:
        """Answer ``questions[i]`` under ``routings[i]`` with ``model``; one batched generate.

        ``min_new_tokens`` holds off end-of-text until that many tokens are out (throughput
        benchmarks decode every path to the same length)."""
        if len(questions) != len(routings):
            raise ValueError(f"{len(questions)} questions but {len(routings)} routings")
        texts = model.prompts(questions, routings)
        if isinstance(model, PerRequestMerge):
            return [self._merged(model, text, routing, max_new_tokens, min_new_tokens)
                    for text, routing in zip(texts, routings)]
        adapter = model.adapter(routings)
        with applied(self.layers, adapter):
            return generate_answers(self.base.model, self.base.tokenizer, texts, max_new_tokens, min_new_tokens)

    def _merged(self, model: PerRequestMerge, text: str, routing: Routing, max_new_tokens: int,
                min_new_tokens: int) -> str:
        """One request under its own adapter, merged into the base weights for its generate."""
        adapter = model.adapter([routing])
        with contextlib.ExitStack() as stack:
            if adapter is not None:
                stack.enter_context(merged(self.layers, adapter))
            return generate_answers(self.base.model, self.base.tokenizer, [text], max_new_tokens, min_new_tokens)[0]
