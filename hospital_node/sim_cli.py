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
    parse_overrides,
    to_dict,
)
from hospital_node.sim_config import METHODS, SimulationConfig
from hospital_node.sim_report import build_report, format_table, plot_progress, write_exports
from hospital_node.store import ResultsStore
from hospital_node.store_read import StoreReader

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
    parser.add_argument(
        "--config", type=Path, help="TOML file with [data] [model] [training] [network] [consensus]"
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
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda")
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
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_privacy_arguments(parser)
    return parser


def _add_privacy_arguments(parser: argparse.ArgumentParser) -> None:
    """--dp and its settings: the `privacy` section (PrivacyConfig, docs/privacy.md)."""
    group = parser.add_argument_group("differential privacy (docs/privacy.md)")
    group.add_argument(
        "--dp",
        choices=("off", "exchange", "dpsgd"),
        help="exchange: noise on every model release (protects the whole site); "
        "dpsgd: per-example clipping and noise in every step (protects one image)",
    )
    amount = group.add_mutually_exclusive_group()
    amount.add_argument("--epsilon", type=float, help="target epsilon (noise calibrated to it)")
    amount.add_argument(
        "--noise-multiplier", type=float, help="sigma: noise std = sigma x clip norm"
    )
    group.add_argument(
        "--clip", type=float, help="clip norm C: per release (exchange) or per example (dpsgd)"
    )
    group.add_argument("--delta", type=float, help="delta; default min(1e-5, 1/n) per site")
    group.add_argument("--accountant", choices=("rdp", "prv"), help="Opacus accountant")
    group.add_argument(
        "--planned-releases",
        type=int,
        help="exchange with --epsilon: releases the noise must cover "
        "(default per node: steps x peers / exchange_interval)",
    )
    group.add_argument(
        "--epsilon-budget", type=float, help="exchange: stop sending beyond this (default E)"
    )


def _privacy_flags(args: argparse.Namespace) -> dict[str, Any]:
    names = {
        "dp": "mode",
        "epsilon": "target_epsilon",
        "noise_multiplier": "noise_multiplier",
        "clip": "clip_norm",
        "delta": "delta",
        "accountant": "accountant",
        "planned_releases": "planned_releases",
        "epsilon_budget": "epsilon_budget",
    }
    given = {field: getattr(args, arg, None) for arg, field in names.items()}
    return {field: value for field, value in given.items() if value is not None}


def resolve_config(args: argparse.Namespace) -> SimulationConfig:
    """Defaults <- TOML file <- explicit flags <- --set overrides."""
    flags: dict[str, Any] = {}
    if args.methods:
        flags["methods"] = args.methods
    if args.seed is not None:
        flags["seed"] = args.seed
    if args.steps is not None:
        flags.setdefault("training", {})["steps"] = args.steps
    if args.device:
        flags.setdefault("training", {})["device"] = args.device
    if args.data:
        flags.setdefault("data", {})["dir"] = str(args.data)
    if privacy := _privacy_flags(args):
        flags["privacy"] = privacy
    return load_config(
        SimulationConfig, args.config, deep_merge(flags, parse_overrides(args.overrides))
    )


def ensure_data(config: SimulationConfig, out: Path) -> Path:
    """The data folder; the built-in synthetic set is generated on first use."""
    if config.data.dir:
        return Path(config.data.dir)
    data_dir = out / "data"
    if not (data_dir / "common_test" / "labels.csv").is_file():
        from data_tools.synth import SynthConfig, generate_dataset

        print(f"Generating the synthetic {config.data.synth_sites}-hospital set in {data_dir} ...")
        synth = SynthConfig(
            sites=config.data.synth_sites,
            per_site=config.data.synth_per_site,
            test_size=config.data.synth_test_size,
            size=config.data.synth_size,
            difficulty=config.data.synth_difficulty,
            missing_per_site=config.data.synth_missing_per_site,
            seed=config.data.synth_seed,
        )
        generate_dataset(synth, data_dir, progress=True)
    return data_dir


def _progress_factory(quiet: bool):
    if quiet:
        return None
    return lambda method, total: tqdm(
        total=total, desc=f"{method:>11}", unit="step", dynamic_ncols=True
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
        stored = store.resume_run(run_id)
        return run_id, from_mapping(SimulationConfig, stored)
    run_id = "sim-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return run_id, config


def run(args: argparse.Namespace) -> int:
    from hospital_node.simulation import Simulation, load_sim_data, method_finished

    config = resolve_config(args)
    args.out.mkdir(parents=True, exist_ok=True)
    store_path = args.out / STORE_NAME
    started = time.perf_counter()
    with ResultsStore.open(store_path) as store:
        run_id, config = _start_or_resume(store, args, config)
        if config.training.threads > 0:
            torch.set_num_threads(config.training.threads)
        data_dir = ensure_data(config, args.out)
        data = load_sim_data(data_dir, config, progress=not args.quiet)
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
                topology={
                    "kind": config.network.topology,
                    "nodes": list(sim.graph.nodes),
                    "edges": [list(e) for e in sim.graph.edges],
                },
            )
            sim.record_setup()
        try:
            for method in config.methods:
                if method_finished(store, run_id, method):
                    print(f"{method}: already finished, skipped")
                    continue
                sim.run_method(method)
        except KeyboardInterrupt:
            store.set_run_status(run_id, "interrupted")
            print(
                f"\nInterrupted. Continue with: ecl-sim --out {args.out} --resume", file=sys.stderr
            )
            return 130
        store.set_run_status(run_id, "finished")
    return _report(store_path, run_id, list(config.methods), args, time.perf_counter() - started)


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
