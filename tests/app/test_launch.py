"""`ecl-app` command line: help, validation before starting, the Streamlit command it runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from app.launch import build_parser, main, streamlit_command
from app.settings import SettingsError, parse_app_args


def test_help_describes_the_app(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for text in ("--results", "--dicom-dir", "--port", "--address", "not a diagnostic device"):
        assert text in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "no results store at"),
        (["--dicom-dir", "/no/such/folder"], "is not a folder"),
    ],
)
def test_bad_arguments_stop_before_starting(tmp_path, capsys, extra, message) -> None:
    store = tmp_path / "results.sqlite"
    if extra:
        store.write_bytes(b"")
    assert main(["--results", str(store), *extra]) == 2
    assert message in capsys.readouterr().err


def test_a_folder_is_not_a_store(tmp_path, capsys) -> None:
    assert main(["--results", str(tmp_path)]) == 2
    assert "is not a file" in capsys.readouterr().err


def test_streamlit_command_and_script_arguments_agree(tmp_path) -> None:
    store = tmp_path / "results.sqlite"
    store.write_bytes(b"")
    args = build_parser().parse_args(
        ["--results", str(store), "--port", "8642", "--dicom-dir", str(tmp_path)]
    )
    command = streamlit_command(args)
    assert command[:4] == [sys.executable, "-m", "streamlit", "run"]
    assert Path(command[4]).name == "main.py"
    for option in (
        "--server.headless=true",
        "--server.address=127.0.0.1",
        "--server.port=8642",
        "--browser.gatherUsageStats=false",
        "--client.showErrorDetails=none",
    ):
        assert option in command
    settings = parse_app_args(command[command.index("--") + 1 :])
    assert settings.results == store.resolve()
    assert settings.dicom_dir == tmp_path.resolve()
    assert settings.min_positives == 10


def test_script_arguments_are_checked() -> None:
    with pytest.raises(SettingsError):
        parse_app_args([])
    with pytest.raises(SettingsError, match="at least 1"):
        parse_app_args(["--results", "x.sqlite", "--min-positives", "0"])
