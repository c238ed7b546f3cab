"""`ecl-app` command line: help, validation before starting, the Streamlit command it runs."""

from __future__ import annotations

import importlib.util
import re
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
        "--server.maxUploadSize=128",  # the DICOM file limit: bigger uploads never reach the app
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


# --- who may open the app ----------------------------------------------------------------------

GOOD_AUTH = """
[auth]
redirect_uri = "https://xray-review.hospital.example/oauth2callback"
cookie_secret = "{secret}"
client_id = "ecl-app"
client_secret = "from-the-identity-provider"
server_metadata_url = "https://login.hospital.example/.well-known/openid-configuration"
"""
HAS_AUTHLIB = importlib.util.find_spec("authlib") is not None


@pytest.fixture()
def store(tmp_path) -> Path:
    path = tmp_path / "results.sqlite"
    path.write_bytes(b"")
    return path


@pytest.fixture()
def served(monkeypatch) -> list[list[str]]:
    """Capture the Streamlit command instead of starting a server."""
    commands: list[list[str]] = []
    monkeypatch.setattr("app.launch._serve", lambda command: commands.append(command) or 0)
    return commands


def write_auth(tmp_path, text: str = GOOD_AUTH, secret: str = "s" * 40) -> Path:
    path = tmp_path / "secrets.toml"
    path.write_text(text.format(secret=secret))
    return path


@pytest.mark.parametrize("address", ["0.0.0.0", "10.20.0.7", "::", "xray-review.hospital.example"])
def test_no_login_beyond_loopback_is_refused(store, capsys, served, address, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["--results", str(store), "--address", address]) == 2
    assert f"refusing to serve on {address} without a login" in capsys.readouterr().err
    assert served == []


def test_no_auth_is_allowed_beyond_loopback_with_a_loud_warning(store, served, caplog):
    assert main(["--results", str(store), "--address", "0.0.0.0", "--no-auth"]) == 0
    assert "NO LOGIN" in caplog.text and "--server.address=0.0.0.0" in served[0]
    assert "--require-login" not in served[0]


def test_loopback_without_login_still_says_so(store, served, caplog, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["--results", str(store)]) == 0
    assert "no login: anyone who can reach 127.0.0.1:8501" in caplog.text


@pytest.mark.skipif(not HAS_AUTHLIB, reason="Authlib not installed: the next test covers that")
def test_a_login_configuration_is_passed_to_streamlit(store, served, tmp_path):
    secrets = write_auth(tmp_path)
    allow = tmp_path / "allow.txt"
    allow.write_text("# radiology\n@hospital.example\nbob@partner.example  # visiting\n")
    args = ["--results", str(store), "--address", "0.0.0.0", "--auth-secrets", str(secrets)]
    args += ["--allow", "Alice@Hospital.example", "--allow-file", str(allow)]
    assert main(args) == 0
    command = served[0]
    assert f"--secrets.files={secrets.resolve()}" in command
    settings = parse_app_args(command[command.index("--") + 1 :])
    assert settings.require_login and settings.auth_provider is None
    assert settings.allowed == ("alice@hospital.example",)
    assert settings.allow_file == allow.resolve()


@pytest.mark.skipif(HAS_AUTHLIB, reason="Authlib is installed here")
def test_a_login_without_authlib_says_what_to_install(store, capsys, tmp_path):
    args = ["--results", str(store), "--auth-secrets", str(write_auth(tmp_path))]
    assert main(args) == 2
    assert "pip install 'streamlit[auth]'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.replace("/oauth2callback", "/"), "must be the app's public address"),
        (lambda t: t.replace('cookie_secret = "{secret}"', 'cookie_secret = "short"'), "32"),
        (lambda t: t.replace('client_secret = "from-the-identity-provider"\n', ""), "lacks"),
        (lambda t: t.replace("[auth]", "[other]"), "has no [auth] table"),
        (lambda t: t.split("client_id")[0] + "[auth.a]\n[auth.b]\n", "several providers"),
        (lambda t: t.split("client_id")[0] + "[auth.okta]\nclient_id = 'x'\n", "[auth.okta] lacks"),
    ],
)
def test_unusable_login_configurations_are_refused_before_starting(
    store, capsys, served, tmp_path, change, message
):
    from app.auth_config import AuthConfigError, load_auth_config

    secrets = write_auth(tmp_path, change(GOOD_AUTH))
    with pytest.raises(AuthConfigError, match=re.escape(message)):
        load_auth_config(secrets)
    assert main(["--results", str(store), "--auth-secrets", str(secrets)]) == 2
    assert served == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--allow", "alice@hospital.example"], "need a login"),
        (["--no-auth", "--allow", "a@b.example"], "contradicts"),
    ],
)
def test_allow_lists_need_a_login(store, capsys, served, tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["--results", str(store), *extra]) == 2
    assert message in capsys.readouterr().err


def test_the_default_secrets_file_is_found_like_streamlit_does(tmp_path):
    from app.auth_config import find_auth_secrets

    project, home = tmp_path / "project", tmp_path / "home"
    (home / ".streamlit").mkdir(parents=True)
    (home / ".streamlit" / "secrets.toml").write_text(GOOD_AUTH.format(secret="x" * 40))
    (project / ".streamlit").mkdir(parents=True)
    (project / ".streamlit" / "secrets.toml").write_text('[database]\npassword = "x"\n')
    assert find_auth_secrets(None, project, home) == home / ".streamlit" / "secrets.toml"
    assert find_auth_secrets(None, project, tmp_path / "nobody") is None
    assert find_auth_secrets(tmp_path / "given.toml", project, home) == tmp_path / "given.toml"


@pytest.mark.parametrize(
    ("address", "loopback"),
    [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("app.local", False)],
)  # fmt: skip
def test_loopback_addresses(address, loopback):
    from app.auth_config import is_loopback

    assert is_loopback(address) is loopback
