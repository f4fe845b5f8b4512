"""Batches for training the built-in model: tokenized examples, the next-token loss, one step,
and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from transformers import PreTrainedTokenizerFast


def collate(tokenizer: PreTrainedTokenizerFast, examples: list[tuple[str, str]], max_length: int) -> dict[str, torch.Tensor]:
    """Right-padded ids with two label sets: every token, and the completion's tokens only.

    Prompt and completion are tokenized separately, exactly as at inference time, where the
    prompt is encoded alone and the completion is generated token by token.
    """
    rows = []
    for prompt, completion in examples:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        c = tokenizer(completion, add_special_tokens=False)["input_ids"]
        rows.append(((p + c)[:max_length], len(p)))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    answer_labels = torch.full((len(rows), width), -100)
    for i, (ids, prompt_len) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        attention_mask[i, :len(ids)] = 1
        answer_labels[i, prompt_len:len(ids)] = input_ids[i, prompt_len:len(ids)]
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "answer_labels": answer_labels}


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each position's logits against the next position's label (-100 = skip)."""
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
               answer_only: bool = False) -> float:
    """One optimizer step on the answer loss, plus the loss on every token unless ``answer_only``;
    gradients clipped to norm 1. Returns the loss."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = next_token_loss(logits, batch["answer_labels"])
    if not answer_only:
        loss = next_token_loss(logits, batch["labels"]) + loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()


def cosine_lr(peak: float, step: int, steps: int, warmup: int = 0) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``peak`` to a tenth of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
