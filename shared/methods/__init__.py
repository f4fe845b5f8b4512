"""Parametric encoding methods. Each has the same shape, like PEFT's tuners:
``config`` (hyper-parameters), ``layers`` (turning stored encodings into per-request factors),
``trainer`` (encoding passages) and ``serializer`` (safetensors plus a manifest)."""
