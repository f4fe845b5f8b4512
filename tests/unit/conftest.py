"""Unit-test fixtures: a randomly initialised, tiny Llama saved as an ordinary checkpoint."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fedprag.shared.data.benchmark import BenchmarkSpec, make_benchmark
from fedprag.shared.models.tiny.build import EOS, train_tokenizer


@pytest.fixture(scope="session")
def random_llama_path(tmp_path_factory):
    """A 2-layer, 32-wide Llama with a tokenizer trained on benchmark text (seconds to make)."""
    path = tmp_path_factory.mktemp("random-llama")
    dataset = make_benchmark(BenchmarkSpec(people=8, sites=2))
    texts = [p.text + EOS for p in dataset.passages] + [q.text for q in dataset.questions]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
