"""The built-in default base model: a small Llama trained from scratch on the synthetic world."""
