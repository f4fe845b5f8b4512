"""The training objective every LoRA encoding shares: next-token loss on all tokens, per sequence."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_sequence_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged within each sequence: ``[b]``."""
    targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    token_loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=-100, reduction="none")
    counts = attention_mask[:, 1:].sum(1).clamp(min=1)
    return token_loss.sum(1) / counts
