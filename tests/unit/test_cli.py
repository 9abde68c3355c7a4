from __future__ import annotations

import pytest
from typer.testing import CliRunner

from app.cli import cli

COMMANDS = ["worker", "demo", "broker", "topics", "produce", "tail", "forget", "schemas",
            "settings", "version", "export-model", "bench", "train"]
BENCHES = ["encoder", "pipeline", "recommender"]


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


@pytest.mark.parametrize("bench", BENCHES)
def test_every_benchmark_has_help(bench: str) -> None:
    result = CliRunner().invoke(cli, ["bench", bench, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_schemas_check_passes_on_the_committed_files() -> None:
    assert CliRunner().invoke(cli, ["schemas", "--check"]).exit_code == 0


def test_version_option_and_help_keep_bracketed_words() -> None:
    from app import __version__

    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"streamrec {__version__}"
    help_text = " ".join(CliRunner().invoke(cli, ["export-model", "--help"]).output.split())
    assert "pip install -e '.[export]'" in help_text          # rich markup used to eat these
    assert "[default: models/<model>-int8]" in help_text
    assert "[default: minilm-l6]" in help_text
