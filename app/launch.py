"""`ecl-app`: start the Streamlit clinician app on a results store."""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from app.settings import add_app_arguments

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
        help="address to listen on; 127.0.0.1 keeps the app on this computer",
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


def streamlit_command(args: argparse.Namespace) -> list[str]:
    """`python -m streamlit run app/main.py --OPTION=VALUE ... -- --results ...`, this venv."""
    options = {
        "server.headless": "true",
        "server.address": args.address,
        "server.port": str(args.port),
        "browser.gatherUsageStats": "false",  # telemetry off
        "server.fileWatcherType": "none",
        "server.runOnSave": "false",
        "client.showErrorDetails": "none",  # never a traceback in a clinician's browser
        "client.toolbarMode": "viewer",
    }
    script_args = ["--results", str(args.results.resolve())]
    script_args += ["--min-positives", str(args.min_positives)]
    if args.dicom_dir is not None:
        script_args += ["--dicom-dir", str(args.dicom_dir.resolve())]
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ecl-app` console script."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    problem = validate(args)
    if problem is not None:
        print(f"ecl-app: error: {problem}", file=sys.stderr)
        return 2
    if args.address not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "serving on %s: anyone who can reach this address can open the app; there is no "
            "login. Keep it on 127.0.0.1 unless the network is trusted.",
            args.address,
        )
    print(f"ecl-app: serving {args.results} at http://{args.address}:{args.port}", flush=True)
    return _serve(streamlit_command(args))


if __name__ == "__main__":
    sys.exit(main())
