"""Library code used by every part of fedprag: models, LoRA layers, encoding methods, the query
engine, retrieval, data schemas, metrics, configuration, the CLI and the evaluation harness."""
