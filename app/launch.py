"""`ecl-app`: start the Streamlit clinician app on a results store."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from app.access import AllowListError, normalise_entry, read_allow_file
from app.auth_config import (
    AuthConfig,
    AuthConfigError,
    find_auth_secrets,
    is_loopback,
    load_auth_config,
)
from app.settings import add_app_arguments
from hospital_node.data.dicom_limits import DEFAULT_LIMITS

logger = logging.getLogger("ecl-app")
MAIN_SCRIPT = Path(__file__).with_name("main.py")
STOP_TIMEOUT_S = 10.0


def build_parser() -> argparse.ArgumentParser:
    """The command line, with a real --help."""
    parser = argparse.ArgumentParser(
        prog="ecl-app",
        description=(
            "Open the clinician app (Streamlit) on a results store: per-site, per-finding AUC "
            "with confidence intervals, training progress, privacy spent, and a case viewer "
            "for a local DICOM. The app only reads the store and local files; it never talks "
            "to other hospitals. Research use only: not a diagnostic device."
        ),
        epilog=(
            "Example: ecl-app --results build/demo/results.sqlite --dicom-dir build/demo/data. "
            "Then open http://ADDRESS:PORT in a browser. See docs/clinician.md."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_app_arguments(parser)
    parser.add_argument("--port", type=int, default=8501, help="TCP port to serve on")
    parser.add_argument(
        "--address",
        default="127.0.0.1",
        help="address to listen on; 127.0.0.1 keeps the app on this computer. Any other "
        "address needs a login (--auth-secrets) or --no-auth",
    )
    parser.add_argument(
        "--auth-secrets",
        type=Path,
        metavar="SECRETS.toml",
        help="Streamlit secrets file whose [auth] table names the hospital's OpenID Connect "
        "identity provider: every user must sign in (docs/hospital-it.md, section 17). "
        "Default: ./.streamlit/secrets.toml or ~/.streamlit/secrets.toml when they hold [auth]",
    )
    parser.add_argument(
        "--auth-provider",
        metavar="NAME",
        help="with several [auth.NAME] providers in the secrets file: the one to use",
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="serve beyond this computer WITHOUT a login (anyone who reaches the address can "
        "open the app); warned about at every start",
    )
    return parser


def validate(args: argparse.Namespace) -> str | None:
    """A message saying what to fix, or None when the arguments can be used."""
    if not args.results.exists():
        return f"no results store at {args.results}; run ecl-sim or hospital-node first"
    if not args.results.is_file():
        return f"{args.results} is not a file; give the path of the .sqlite results store"
    if args.dicom_dir is not None and not args.dicom_dir.is_dir():
        return f"--dicom-dir {args.dicom_dir} is not a folder"
    if not 1 <= args.port <= 65535:
        return f"--port {args.port} is not a TCP port (1-65535)"
    if args.min_positives < 1:
        return "--min-positives must be at least 1"
    return None


def max_upload_megabytes() -> int:
    """Streamlit's server.maxUploadSize (its MB are MiB): the DICOM file-size limit, so a bigger
    upload is refused by the widget before the app reads a byte of it."""
    return math.ceil(DEFAULT_LIMITS.max_file_bytes / 2**20)


def streamlit_command(args: argparse.Namespace, auth: AuthConfig | None = None) -> list[str]:
    """`python -m streamlit run app/main.py --OPTION=VALUE ... -- --results ...`, this venv.
    With a login, Streamlit reads exactly the checked secrets file."""
    options = {
        "server.headless": "true",
        "server.address": args.address,
        "server.port": str(args.port),
        "browser.gatherUsageStats": "false",  # telemetry off
        "server.fileWatcherType": "none",
        "server.runOnSave": "false",
        "client.showErrorDetails": "none",  # never a traceback in a clinician's browser
        "client.toolbarMode": "viewer",
        "server.maxUploadSize": str(max_upload_megabytes()),
    }
    script_args = ["--results", str(args.results.resolve())]
    script_args += ["--min-positives", str(args.min_positives)]
    if args.dicom_dir is not None:
        script_args += ["--dicom-dir", str(args.dicom_dir.resolve())]
    if auth is not None:
        options["secrets.files"] = str(auth.secrets.resolve())
        script_args.append("--require-login")
        if auth.provider:
            script_args += ["--auth-provider", auth.provider]
        for entry in getattr(args, "allow", []):
            script_args += ["--allow", entry]
        if getattr(args, "allow_file", None) is not None:
            script_args += ["--allow-file", str(args.allow_file.resolve())]
    command = [sys.executable, "-m", "streamlit", "run", str(MAIN_SCRIPT)]
    return [*command, *(f"--{key}={value}" for key, value in options.items()), "--", *script_args]


def _serve(command: list[str]) -> int:
    """Run Streamlit until it exits; SIGTERM/SIGINT to us stop it too."""
    process = subprocess.Popen(command)

    def stop(signum: int, frame: FrameType | None) -> None:
        process.terminate()

    signal.signal(signal.SIGTERM, stop)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        try:
            return process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()


def resolve_access(args: argparse.Namespace) -> AuthConfig | None:
    """The login configuration, or None when the app may run without one; AuthConfigError
    (or AllowListError) says what to fix."""
    secrets = find_auth_secrets(args.auth_secrets, Path.cwd(), Path.home())
    if args.no_auth:
        if args.auth_secrets is not None or args.allow or args.allow_file:
            raise AuthConfigError("--no-auth contradicts --auth-secrets / --allow; drop one")
        return None
    auth = None if secrets is None else load_auth_config(secrets, args.auth_provider)
    for entry in args.allow:
        normalise_entry(entry)
    if args.allow_file is not None:
        read_allow_file(args.allow_file)
    if auth is None and (args.allow or args.allow_file):
        raise AuthConfigError("--allow / --allow-file need a login: give --auth-secrets")
    if auth is None and not is_loopback(args.address):
        raise AuthConfigError(
            f"refusing to serve on {args.address} without a login: anyone who can reach it "
            "could open the app. Configure the hospital's identity provider (--auth-secrets "
            "SECRETS.toml, docs/hospital-it.md section 17), or pass --no-auth to accept that"
        )
    return auth


def warn_about_access(args: argparse.Namespace, auth: AuthConfig | None) -> None:
    """Say loudly who can open the app, at every start."""
    where = f"{args.address}:{args.port}"
    if auth is not None:
        who = "users on the allow-list" if args.allow or args.allow_file else "every user"
        logger.info(
            "login required (%s, %s): %s the identity provider signs in may open the app",
            auth.secrets,
            auth.provider or "[auth]",
            who,
        )
    elif args.no_auth and not is_loopback(args.address):
        bar = "!" * 78
        logger.warning(
            "\n%s\nNO LOGIN: --no-auth serves the app on %s to ANYONE who can reach that "
            "address.\nPatient images uploaded to the case viewer and the site results are "
            "open to them.\nConfigure a login instead (docs/hospital-it.md section 17).\n%s",
            bar,
            where,
            bar,
        )
    else:
        logger.warning(
            "no login: anyone who can reach %s (including through a reverse proxy on this "
            "computer) can open the app; see docs/hospital-it.md section 17",
            where,
        )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ecl-app` console script."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if importlib.util.find_spec("streamlit") is None:  # a node install has no app
        print(
            "ecl-app: error: the app is an extra: pip install 'ecl-hospitals[app]'", file=sys.stderr
        )
        return 2
    problem, auth = validate(args), None
    if problem is None:
        try:
            auth = resolve_access(args)
        except (AuthConfigError, AllowListError) as exc:
            problem = str(exc)
    if problem is not None:
        print(f"ecl-app: error: {problem}", file=sys.stderr)
        return 2
    warn_about_access(args, auth)
    print(f"ecl-app: serving {args.results} at http://{args.address}:{args.port}", flush=True)
    return _serve(streamlit_command(args, auth))


if __name__ == "__main__":
    sys.exit(main())
