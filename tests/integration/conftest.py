"""Shared fixtures for integration tests: the small built-in model, built once per session."""

import pytest

from fedprag.shared.models.loading import load_causal_lm


@pytest.fixture(scope="session")
def small_model_spec():
    """Builds (or finds cached) the 'small' recipe of the built-in model: about 2 minutes on 2 cores."""
    load_causal_lm("tiny:small")
    return "tiny:small"


@pytest.fixture(scope="session")
def small_reader_spec():
    """Builds (or finds cached) the 'small-reader' recipe: about 4 minutes on 2 cores."""
    load_causal_lm("tiny:small-reader")
    return "tiny:small-reader"
