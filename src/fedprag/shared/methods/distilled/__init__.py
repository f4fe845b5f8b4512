"""DistilledPRAG: a parameter generator that turns documents into LoRA weights in one forward pass.

Reference: docs/design.md §2.3. ``config`` holds the hyper-parameters, ``layers`` the mask token and
the generator, ``trainer`` the distillation from standard RAG (teacher: documents in context;
student: mask tokens plus the generated LoRA), ``serializer`` the generator checkpoint, bound to
its base model.
"""

from fedprag.shared.methods.distilled.config import DistilledConfig  # no torch: the configuration imports it

__all__ = ["DistilledConfig"]
