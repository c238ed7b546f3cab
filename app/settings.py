"""The app's inputs: command-line settings (after `--`) and the per-session page context."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MIN_POSITIVES = 10  # fewer positive test images than this: the AUC is flagged 'unreliable'
CONTEXT_KEY = "ecl_app_context"  # st.session_state key the main script fills for the pages


class SettingsError(ValueError):
    """The app was started with arguments it cannot use; the message says what to do."""


@dataclass(frozen=True)
class AppSettings:
    """What `ecl-app` was started with; parsed once per script run from sys.argv."""

    results: Path
    dicom_dir: Path | None = None
    min_positives: int = DEFAULT_MIN_POSITIVES
    require_login: bool = False  # OIDC login configured: nobody sees a page before st.login
    auth_provider: str | None = None  # None: the [auth] section itself; else [auth.NAME]
    allowed: tuple[str, ...] = ()  # e-mail addresses and @domains; empty: every signed-in user
    allow_file: Path | None = None


@dataclass(frozen=True)
class AppContext:
    """What every page needs: the settings, the chosen run and the store's version stamp.

    `version` changes whenever the store file (or its write-ahead log) changes, so the cached
    read functions, which take it as an argument, re-read a store that a running simulation
    is still writing.
    """

    settings: AppSettings
    run_id: str
    version: str

    @property
    def store_path(self) -> str:
        """The results store as a string (the cache key form)."""
        return str(self.settings.results)


def add_app_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments shared by `ecl-app` and the Streamlit script."""
    parser.add_argument(
        "--results",
        type=Path,
        required=True,
        metavar="PATH",
        help="results store written by ecl-sim or hospital-node (e.g. build/demo/results.sqlite)",
    )
    parser.add_argument(
        "--dicom-dir",
        type=Path,
        metavar="DIR",
        help="folder of DICOM files the case viewer may open (files outside it are refused)",
    )
    parser.add_argument(
        "--min-positives",
        type=int,
        default=DEFAULT_MIN_POSITIVES,
        metavar="N",
        help="flag an AUC as unreliable when its test set has fewer than N positive images",
    )
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="EMAIL|@DOMAIN",
        help="with a login: only these users may open the app (repeat it; '@hospital.example' "
        "admits a whole domain); without --allow every user the identity provider signs in",
    )
    parser.add_argument(
        "--allow-file",
        type=Path,
        metavar="FILE",
        help="more allow-list entries, one per line ('#' comments); re-read on every page view",
    )


class _RaisingParser(argparse.ArgumentParser):
    """argparse that raises SettingsError instead of printing and exiting the server."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SettingsError(message)


def parse_app_args(argv: list[str]) -> AppSettings:
    """Settings from the script's arguments (what ecl-app passes after `--`)."""
    parser = _RaisingParser(prog="app/main.py", add_help=False)
    add_app_arguments(parser)
    parser.add_argument("--require-login", action="store_true")
    parser.add_argument("--auth-provider")
    args = parser.parse_args(argv)
    if args.min_positives < 1:
        raise SettingsError("--min-positives must be at least 1")
    if (args.allow or args.allow_file) and not args.require_login:
        raise SettingsError("--allow and --allow-file need a login (--require-login)")
    dicom_dir = args.dicom_dir.expanduser().resolve() if args.dicom_dir else None
    return AppSettings(
        results=args.results.expanduser().resolve(),
        dicom_dir=dicom_dir,
        min_positives=args.min_positives,
        require_login=args.require_login,
        auth_provider=args.auth_provider,
        allowed=tuple(e.strip().lower() for e in args.allow),
        allow_file=args.allow_file.expanduser().resolve() if args.allow_file else None,
    )
