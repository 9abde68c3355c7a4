from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.settings import Settings, settings_markdown

DOC = Path(__file__).parents[2] / "docs" / "configuration.md"


def test_configuration_doc_lists_every_variable_as_the_code_does() -> None:
    assert settings_markdown() in DOC.read_text(), (
        "docs/configuration.md is stale: paste `streamrec settings --markdown` into it"
    )
    for name in Settings.model_fields:
        assert f"`STREAMREC_{name.upper()}`" in DOC.read_text()


def test_environment_is_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_PARTITIONS", "12")
    monkeypatch.setenv("STREAMREC_BROKER_URL", "kafka://a:9092, b:9093")
    settings = Settings()
    assert settings.partitions == 12
    assert not settings.embedded
    assert settings.bootstrap_servers() == "a:9092,b:9093"


def test_embedded_when_no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMREC_BROKER_URL", raising=False)
    settings = Settings(_env_file=None)
    assert settings.embedded
    assert settings.bootstrap_servers() == f"127.0.0.1:{settings.embedded_port}"


def test_settings_are_frozen() -> None:
    settings = Settings(_env_file=None)
    with pytest.raises(Exception, match="frozen"):
        settings.partitions = 3  # type: ignore[misc]


def test_secrets_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_SASL_PASSWORD", "hunter2-secret")
    from app.settings import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["settings"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0
    assert "STREAMREC_SASL_PASSWORD=**********" in result.output
    assert "hunter2" not in result.output
    assert "hunter2" not in repr(Settings())


def test_the_api_token_is_a_bearer_token_compared_whole() -> None:
    from app.worker.web import authorized

    assert authorized(None, "")          # no token set: open
    assert authorized("Bearer s3cret", "s3cret")
    assert authorized("bearer s3cret", "s3cret")
    assert not authorized(None, "s3cret")
    assert not authorized("Bearer s3cre", "s3cret")
    assert not authorized("Bearer s3cret2", "s3cret")
    assert not authorized("Basic s3cret", "s3cret")
    assert not authorized("s3cret", "s3cret")


@pytest.mark.parametrize(("compression", "codec"), [("zstd", "zstd"), ("none", None)])
def test_the_workers_producer_compresses_as_set(tmp_path: Path, compression: str,
                                                codec: str | None) -> None:
    from aiokafka.codec import has_zstd

    from app.worker.declarations import declare
    decl = declare(Settings(_env_file=None, data_dir=tmp_path, compression=compression))
    assert decl.app.conf.producer_compression_type == codec
    assert has_zstd()   # the codec is installed with the worker (cramjam)
