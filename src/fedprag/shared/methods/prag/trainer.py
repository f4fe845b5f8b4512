"""Encode passages the PRAG way: a fresh LoRA per passage, trained on its augmentation.

Each passage gets 5 training sequences (QA1 and QA2 with the passage, and again with the rewrite,
in context; QA3 closed-book), with the loss on every token. Passages are trained ``parallel`` at a
time as independent LoRAs: each row of the batch belongs to a different passage and has its own
factors, and the loss is the sum of per-passage means, so every LoRA sees exactly the gradients
of batch-1 training on its own data.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import torch
from tqdm.auto import tqdm

from fedprag.shared import prompts
from fedprag.shared.data.schema import Augmentation, Passage
from fedprag.shared.lora.layers import LoRALinear, LowRank, applied, init_factors
from fedprag.shared.lora.objective import per_sequence_loss
from fedprag.shared.methods.prag.config import PRAGConfig
from fedprag.shared.methods.prag.layers import PRAGAdapters
from fedprag.shared.models.loading import BaseModel


def training_texts(passage: str, augmentation: Augmentation, eos: str) -> list[str]:
    """PRAG's five training sequences for one passage, from its first three QA pairs (repeated
    when it has fewer); a passage with no pair trains on its text and rewrite alone."""
    qa, rewrite = augmentation.qa, augmentation.rewrite
    if not qa:
        return [passage + eos, rewrite + eos] * 2 + [passage + eos]
    (q1, a1), (q2, a2), (q3, a3) = (qa[i % len(qa)] for i in range(3))
    texts = [
        prompts.with_context([passage], q1) + prompts.completion(a1),
        prompts.with_context([rewrite], q1) + prompts.completion(a1),
        prompts.with_context([passage], q2) + prompts.completion(a2),
        prompts.with_context([rewrite], q2) + prompts.completion(a2),
        prompts.closed_book(q3) + prompts.completion(a3),
    ]
    return [t + eos for t in texts]


def _train_group(base: BaseModel, layers: Mapping[str, LoRALinear], ids: list[str],
                 texts: list[list[str]], config: PRAGConfig, rng: random.Random) -> PRAGAdapters:
    params = {n: (torch.nn.Parameter(a), torch.nn.Parameter(b))
              for n, (a, b) in init_factors(layers, len(ids), config.rank, config.init_seed).items()}
    optimizer = torch.optim.AdamW([p for pair in params.values() for p in pair], lr=config.lr, weight_decay=0.0)
    orders = [[i for _ in range(config.epochs) for i in rng.sample(range(len(t)), len(t))] for t in texts]
    tokenizer = base.tokenizer
    tokenizer.padding_side = "right"
    for step in range(len(orders[0])):
        batch = tokenizer([t[o[step]] for t, o in zip(texts, orders)], return_tensors="pt", padding=True)
        adapter = {n: LowRank(a, b, config.scale) for n, (a, b) in params.items()}
        with applied(layers, adapter):
            logits = base.model(**batch).logits
        loss = per_sequence_loss(logits, batch["input_ids"], batch["attention_mask"]).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return PRAGAdapters(ids, {n: (a.detach(), b.detach()) for n, (a, b) in params.items()}, config.scale)


def encode_passages(base: BaseModel, layers: Mapping[str, LoRALinear], passages: Sequence[Passage],
                    augmentations: Mapping[str, Augmentation], config: PRAGConfig,
                    show_progress: bool = True) -> PRAGAdapters:
    """Train one LoRA per passage; returns them stacked in passage order."""
    config.validate()
    rng = random.Random(config.init_seed)
    eos = base.tokenizer.eos_token
    groups = []
    with tqdm(total=len(passages), desc="PRAG encode", unit="passage", disable=not show_progress) as bar:
        for start in range(0, len(passages), config.parallel):
            chunk = passages[start:start + config.parallel]
            texts = [training_texts(p.text, augmentations[p.passage_id], eos) for p in chunk]
            groups.append(_train_group(base, layers, [p.passage_id for p in chunk], texts, config, rng))
            bar.update(len(chunk))
    return PRAGAdapters.concat(groups)
