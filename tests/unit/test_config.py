"""One typed configuration: file < environment < flags, and errors that name the field."""

import pytest

from fedprag.shared.config import ConfigError, config_to_toml, load_config


def test_defaults_are_valid():
    config = load_config(environ={})
    assert config.model.path == "tiny"
    assert config.prag.rank == 2 and config.prag.alpha == 32
    assert config.harness.top_k == 3


def test_precedence_file_env_flags(tmp_path):
    file = tmp_path / "fedprag.toml"
    file.write_text('[prag]\nepochs = 1\nrank = 4\n[benchmark]\npeople = 10\n[eval]\nmethods = ["prag"]\n')
    config = load_config(file, overrides={"prag.rank": "8"}, environ={"FEDPRAG__PRAG__EPOCHS": "3"})
    assert (config.prag.epochs, config.prag.rank, config.benchmark.people) == (3, 8, 10)
    assert config.eval.methods == ("prag",)


def test_comma_separated_lists_from_flags():
    config = load_config(overrides={"eval.methods": "closed_book, standard_rag"}, environ={})
    assert config.eval.methods == ("closed_book", "standard_rag")


@pytest.mark.parametrize("overrides, field", [
    ({"prag.rank": "two"}, "prag.rank: expected int"),
    ({"prag.rank": "0"}, "prag.rank: must be a positive integer"),
    ({"prag.nonsense": "1"}, "prag.nonsense: unknown field"),
    ({"benchmark.alpha": "-1"}, "benchmark.alpha"),
    ({"harness.top_k": "0"}, "harness.top_k"),
    ({"harness.hops": "3"}, "harness.hops: must be 1 or 2"),
    ({"federation.runtime": "cloud"}, "federation.runtime"),
    ({"federation.ray_address": "10.0.0.1:6379"}, "federation.ray_address: only the simulation runtime"),
    ({"serve.look_back_period_s": "0"}, "serve.look_back_period_s: must be positive"),
    ({"coordinator.port": "70000"}, "coordinator.port: must be a port"),
    ({"coordinator.campaign_every_s": "-1"}, "coordinator.campaign_every_s"),
])
def test_errors_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        load_config(overrides=overrides, environ={})


def test_bad_toml_names_the_file(tmp_path):
    file = tmp_path / "bad.toml"
    file.write_text("[prag\n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(file, environ={})


def test_a_written_config_reads_back_equal(tmp_path):
    config = load_config(overrides={"federation.rounds": "3", "eval.methods": "poly,prag"}, environ={})
    path = tmp_path / "fedprag.toml"
    path.write_text(config_to_toml(config))
    assert load_config(path, environ={}) == config
