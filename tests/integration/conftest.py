"""Shared fixtures for integration tests: the small built-in model, which ships with fedprag."""

import pytest

from fedprag.shared.models.loading import load_causal_lm
from tests.integration.federation_support import running_federation


@pytest.fixture(scope="session")
def small_model_spec():
    """The 'small' recipe of the built-in model (shipped; about 3 minutes on 2 cores to rebuild)."""
    load_causal_lm("tiny:small")
    return "tiny:small"


@pytest.fixture(scope="session")
def ray_session():
    """The test session's one Ray (2 CPUs, no dashboard), shut down at the end."""
    import ray

    from fedprag.cluster.serving.app import init_ray

    if not ray.is_initialized():
        init_ray(None, num_cpus=2)  # retried: on a busy machine a raylet can miss Ray's start-up deadline
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def poly_federation(tmp_path_factory):
    """The session's Poly-PRAG federation (federation_support.Federation), shared by every module that needs one."""
    with running_federation(tmp_path_factory.mktemp("poly-federation"), "poly") as federation:
        yield federation


@pytest.fixture(scope="session")
def distilled_federation(tmp_path_factory):
    """The session's DistilledPRAG federation (federation_support.Federation), shared by every module that needs one."""
    with running_federation(tmp_path_factory.mktemp("distilled-federation"), "distilled") as federation:
        yield federation
