"""Shared fixtures for integration tests: the small built-in model, which ships with fedprag, the
session's Ray and its federation of each mode (each stops after its last test: tests/phases.py)."""

from contextlib import contextmanager

import pytest

from fedprag.shared.models.loading import load_causal_lm
from tests import phases
from tests.integration.federation_support import running_federation


@pytest.fixture(scope="session")
def small_model_spec():
    """The 'small' recipe of the built-in model (shipped; about 3 minutes on 2 cores to rebuild)."""
    load_causal_lm("tiny:small")
    return "tiny:small"


@contextmanager
def _ray(_work):
    import ray

    from fedprag.cluster.serving.ray_start import init_ray

    init_ray(None, num_cpus=2)  # retried: on a busy machine a raylet can miss Ray's start-up deadline
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


phases.register("ray_session", _ray)
phases.register("distilled_federation", lambda work: running_federation(work, "distilled"), early=True)
phases.register("poly_federation", lambda work: running_federation(work, "poly"), early=True)


@pytest.fixture(scope="session")
def ray_session(shared_resources):
    """The test session's one Ray (2 CPUs, no dashboard); its address."""
    return phases.shared("ray_session").value(shared_resources)


@pytest.fixture(scope="session")
def poly_federation(shared_resources):
    """The session's Poly-PRAG federation (federation_support.Federation), shared by every module that needs one."""
    return phases.shared("poly_federation").value(shared_resources)


@pytest.fixture(scope="session")
def distilled_federation(shared_resources):
    """The session's DistilledPRAG federation (federation_support.Federation), shared by every module that needs one."""
    return phases.shared("distilled_federation").value(shared_resources)
