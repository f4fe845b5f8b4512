"""Batched greedy answering: many prompts, one forward per new token.

Per-request adapters are set around the call with :func:`fedprag.shared.lora.layers.applied`; every row of
the batch then decodes under its own low-rank update.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

MAX_NEW_TOKENS = 12


@torch.inference_mode()
def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_texts: Sequence[str],
    max_new_tokens: int = MAX_NEW_TOKENS,
    min_new_tokens: int = 0,
) -> list[str]:
    """Greedy-decode a completion for each prompt in one batch; stops at end-of-text.

    ``min_new_tokens`` suppresses end-of-text until that many tokens are out; throughput
    benchmarks set it to ``max_new_tokens`` so that every path decodes the same number of tokens.
    """
    tokenizer.padding_side = "left"
    batch = tokenizer(list(prompt_texts), return_tensors="pt", padding=True)
    out = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    new_tokens = out[:, batch["input_ids"].shape[1]:]
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

