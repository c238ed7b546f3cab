"""`ecl-sim`: the researchers' N-hospital simulation: ECL vs gossip, FedAvg, local, centralized."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from hospital_node.configio import (
    ConfigError,
    deep_merge,
    from_mapping,
    load_config,
    migrate,
    parse_overrides,
    to_dict,
)
from hospital_node.devices import resolve_device
from hospital_node.privacy.flags import add_privacy_arguments, privacy_overrides
from hospital_node.simulation.budget import with_data_budget
from hospital_node.simulation.config import METHODS, MOVED_KEYS, SimulationConfig
from hospital_node.simulation.report import build_report, format_table, plot_progress, write_exports
from hospital_node.store.reader import StoreReader
from hospital_node.store.writer import ResultsStore

log = logging.getLogger("ecl-sim")
STORE_NAME = "results.sqlite"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecl-sim",
        description=(
            "Simulate N hospitals on one machine and compare edge-consensus learning "
            "(ECL-PDMM, ECL-ADMM) with gossip SGD, FedAvg, local-only and centralized training "
            "on the same data, model, initialisation and budget. Results go to "
            "OUT/results.sqlite (open it with ecl-app)."
        ),
        epilog=(
            "Every configuration field can be set in the TOML file or with "
            "--set SECTION.FIELD=VALUE, "
            "e.g. --set network.exchange_interval=8 --set consensus.learning_rate=0.05. "
            "See docs/researcher.md for every field."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_run_arguments(parser)
    add_privacy_arguments(parser)
    return parser


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the data and results are, what to run, and how."""
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML file: [data] [synth] [model] [training] [evaluation] [network] [consensus] "
        "[privacy]",
    )
    parser.add_argument(
        "--data",
        type=Path,
        help="site folder tree (ecl-data synth|nih); default: OUT/data, synthetic, made if missing",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("build/sim"),
        help="output folder (results store, checkpoints, reports)",
    )
    parser.add_argument(
        "--methods", help=f"comma-separated subset of {','.join(METHODS)} (default: all)"
    )
    parser.add_argument(
        "--steps", type=int, help="local steps per hospital (centralized gets steps x hospitals)"
    )
    parser.add_argument(
        "--seed", type=int, help="seed for data order, initialisation and exchange times"
    )
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda (training.device)")
    parser.add_argument("--precision", choices=("fp32", "bf16"),
                        help="bf16: autocast of the forward pass (training.precision)")  # fmt: skip
    parser.add_argument(
        "--backend",
        choices=("inprocess", "ray"),
        help="inprocess (default: one process, vmapped) or ray (one actor per hospital; "
        "pip install '.[ray]'; [ray] settings: address, cpus/gpus_per_hospital)",
    )
    parser.add_argument("--report-json", type=Path, help="also write the comparison as JSON here")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the last unfinished run in OUT from its checkpoints",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field (repeatable)",
    )
    parser.add_argument(
        "--tune",
        action="store_true",
        help="first choose each method's learning rate from tune.learning_rates on the "
        "hospitals' pooled validation splits (resumable, OUT/tuning/), then run and report "
        "on the test sets with the choices",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def resolve_config(args: argparse.Namespace) -> SimulationConfig:
    """Defaults <- TOML file <- explicit flags <- --set overrides."""
    flags: dict[str, Any] = {}
    if args.methods:
        flags["methods"] = args.methods
    if args.seed is not None:
        flags.setdefault("training", {})["seed"] = args.seed
    if args.steps is not None:
        flags.setdefault("training", {})["steps"] = args.steps
    if args.device:
        flags.setdefault("training", {})["device"] = args.device
    if args.precision:
        flags.setdefault("training", {})["precision"] = args.precision
    if args.data:
        flags["data_dir"] = str(args.data)
    if args.backend:
        flags["backend"] = args.backend
    flags = deep_merge(flags, privacy_overrides(args))
    return load_config(
        SimulationConfig,
        args.config,
        deep_merge(flags, parse_overrides(args.overrides)),
        moved=MOVED_KEYS,
    )


def ensure_data(config: SimulationConfig, out: Path) -> Path:
    """The data folder; the built-in synthetic set is generated on first use."""
    if config.data_dir:
        return Path(config.data_dir)
    data_dir = out / "data"
    if not (data_dir / "common_test" / "labels.csv").is_file():
        from data_tools.synth import generate_dataset

        print(f"Generating the synthetic {config.synth.sites}-hospital set in {data_dir} ...")
        generate_dataset(config.synth, data_dir, progress=True)
    return data_dir


def _progress_factory(quiet: bool, prefix: str = ""):
    if quiet:
        return None
    return lambda method, total: tqdm(
        total=total, desc=f"{prefix}{method:>11}", unit="step", dynamic_ncols=True
    )


def _start_or_resume(
    store: ResultsStore, args, config: SimulationConfig
) -> tuple[str, SimulationConfig]:
    if args.resume:
        runs = store.list_runs()
        pending = runs[(runs["kind"] == "simulation") & (runs["status"] != "finished")]
        if pending.empty:
            raise ConfigError(f"nothing to resume in {args.out}: no unfinished simulation run")
        run_id = str(pending.iloc[0]["run_id"])
        stored = migrate(store.resume_run(run_id), MOVED_KEYS, where=f"stored run {run_id}")
        return run_id, from_mapping(SimulationConfig, stored)
    run_id = "sim-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return run_id, config


def run(args: argparse.Namespace) -> int:
    from hospital_node.simulation.data import load_sim_data
    from hospital_node.simulation.runner import Simulation

    config = resolve_config(args)
    args.out.mkdir(parents=True, exist_ok=True)
    store_path = args.out / STORE_NAME
    started = time.perf_counter()
    with ResultsStore.open(store_path) as store:
        run_id, config = _start_or_resume(store, args, config)
        # before any data is read: CUDA asked for and absent is an error, not a late crash
        resolve_device(config.training.device, precision=config.training.precision)
        if config.training.threads > 0:
            torch.set_num_threads(config.training.threads)
        data = load_sim_data(ensure_data(config, args.out), config, progress=not args.quiet)
        config = with_data_budget(config, [len(data.train[s]) for s in data.sites])
        log.info("training.steps = %d local steps per hospital", config.training.steps)
        if args.tune and not args.resume:
            from hospital_node.simulation.tune import tune_methods

            progress = _progress_factory(args.quiet, prefix="tune ")
            config = tune_methods(config, data, out=args.out / "tuning", progress=progress)
        sim = Simulation(
            config,
            data=data,
            store=store,
            run_id=run_id,
            checkpoint_dir=args.out / "checkpoints" / run_id,
            progress=_progress_factory(args.quiet),
        )
        if not args.resume:
            store.start_run(
                run_id,
                kind="simulation",
                config=to_dict(config),
                privacy=None if config.privacy.mode == "off" else to_dict(config.privacy),
                topology=sim.topology(),
            )
            sim.record_setup()
        if not _run_methods(sim, store, args):
            return 130
    return _report(store_path, run_id, list(config.methods), args, time.perf_counter() - started)


def _run_methods(sim, store: ResultsStore, args: argparse.Namespace) -> bool:
    """Every method not finished yet; False when interrupted (the run stays resumable)."""
    from hospital_node.simulation.runner import method_finished

    try:
        for method in sim.config.methods:
            if method_finished(store, sim.run_id, method):
                print(f"{method}: already finished, skipped")
                continue
            sim.run_method(method)
    except KeyboardInterrupt:
        store.set_run_status(sim.run_id, "interrupted")
        print(f"\nInterrupted. Continue with: ecl-sim --out {args.out} --resume", file=sys.stderr)
        return False
    store.set_run_status(sim.run_id, "finished")
    return True


def _report(store_path: Path, run_id: str, methods: list[str], args, elapsed: float) -> int:
    with StoreReader.open_readonly(store_path) as reader:
        report = build_report(reader, run_id, methods)
        report["wall_time_s"] = round(elapsed, 1)
        exports = write_exports(report, args.out / "report")
        plot = plot_progress(reader, run_id, args.out / "report" / "auc_vs_steps.png")
    print()
    print(format_table(report))
    print(f"\nWall time {elapsed:.0f} s. Reports: {', '.join(str(p) for p in [*exports, plot])}")
    if args.report_json:
        args.report_json.parent.mkdir(parents=True, exist_ok=True)
        args.report_json.write_text(json.dumps(report, indent=2))
        print(f"JSON report: {args.report_json}")
    print(
        f"Open the clinician app on these results:  ecl-app --results {store_path}   (or: make app)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"ecl-sim: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
