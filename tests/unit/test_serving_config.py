"""The query API's configuration and request bodies refuse bad values with the field named (no Ray needed)."""

import pytest
from pydantic import ValidationError

from fedprag.cli import main
from fedprag.cluster.serving.schema import ChatCompletionRequest, QueryRequest, pinned_version
from fedprag.shared.config import ConfigError, load_config


def test_serve_settings_are_validated_with_the_field_named():
    with pytest.raises(ConfigError, match="serve.sites"):
        load_config(None, {"serve.sites": "site-a"})
    with pytest.raises(ConfigError, match="serve.routing"):
        load_config(None, {"serve.routing": "random"})
    with pytest.raises(ConfigError, match="serve.encoder_dtype"):
        load_config(None, {"serve.encoder_dtype": "float16"})
    with pytest.raises(ConfigError, match="serve.busy_batch_wait_ms"):
        load_config(None, {"serve.busy_batch_wait_ms": "0"})
    with pytest.raises(ConfigError, match="serve.key_rate_limits"):
        load_config(None, {"serve.api_keys": "a", "serve.key_rate_limits": "b=5"})
    config = load_config(None, {"serve.sites": "a=127.0.0.1:7070,b=10.0.0.2:7071", "serve.api_keys": "k1,k2",
                                "serve.key_rate_limits": "k2=2.5"})
    assert config.serve.site_addresses() == {"a": "127.0.0.1:7070", "b": "10.0.0.2:7071"}
    assert config.serve.key_rates() == {"k2": 2.5}
    with pytest.raises(ValueError, match="serve.ca_cert"):
        config.serve.check_files()


def test_beyond_loopback_the_query_api_serves_https_unless_told_a_proxy_terminates_tls(tmp_path):
    with pytest.raises(ConfigError, match="serve.tls_cert: required to serve on 0.0.0.0"):
        load_config(None, {"serve.host": "0.0.0.0"})
    with pytest.raises(ConfigError, match="serve.tls_cert and serve.tls_key"):
        load_config(None, {"serve.tls_cert": "api.pem"})
    assert load_config(None, {"serve.host": "0.0.0.0", "serve.plaintext": "true"}).serve.plaintext
    with pytest.raises(ConfigError, match="serve.grpc_port: the gRPC port speaks plaintext on every interface"):
        load_config(None, {"serve.grpc_port": "9000"})
    assert load_config(None, {"serve.grpc_port": "9000", "serve.plaintext": "true"}).serve.grpc_port == 9000
    for host in ("127.0.0.1", "localhost", "::1"):
        assert load_config(None, {"serve.host": host}).serve.host == host
    config = load_config(None, {"serve.host": "10.0.0.5", "serve.tls_cert": str(tmp_path / "api.pem"),
                                "serve.tls_key": str(tmp_path / "api.key"), "serve.api_keys": "k"})
    with pytest.raises(ValueError, match="serve.tls_cert: must be a file"):
        config.serve.check_files()


def test_fedprag_serve_without_an_api_key_exits_2_naming_the_field(capsys):
    assert main(["serve", "--registry", "/nonexistent"]) == 2
    assert "serve.api_keys" in capsys.readouterr().err


def test_model_names_pin_a_pool_version_or_are_refused():
    assert pinned_version("fedprag") is None and pinned_version("fedprag@12") == 12
    for bad in ("gpt-4", "fedprag@", "fedprag@-1", "fedprag@01", "fedprag@1x"):
        with pytest.raises(ValidationError, match="model"):
            QueryRequest(question="Who?", model=bad)


def test_a_chat_request_needs_a_user_message_and_asks_the_last_one():
    with pytest.raises(ValidationError, match="user message"):
        ChatCompletionRequest(messages=[{"role": "system", "content": "Be brief."}])
    request = ChatCompletionRequest(messages=[{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"},
                                              {"role": "user", "content": "second"}])
    assert request.question() == "second"
    with pytest.raises(ValidationError, match="stream"):
        ChatCompletionRequest(messages=[{"role": "user", "content": "q"}], stream=True)


def test_text_that_no_tokenizer_reads_is_refused_by_the_schema():
    with pytest.raises(ValidationError, match="question"):
        QueryRequest(question="\ud800 born?")
