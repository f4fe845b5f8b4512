"""Library code used by every part of fedprag: models, LoRA layers, encoding methods, retrieval,
data schemas, metrics and the evaluation harness."""
