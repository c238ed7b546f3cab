"""Privacy in the simulation: DP-SGD gradients, per-node planning, resume, ecl-sim end to end."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from opacus.accountants import RDPAccountant

from consensus.privacy import PrivacyConfig
from consensus.topology import from_edges, node_names
from hospital_node.checkpoint import load_checkpoint_file, save_checkpoint
from hospital_node.configio import ConfigError
from hospital_node.simulation.cli import build_parser, main, resolve_config
from hospital_node.simulation.config import SimulationConfig
from hospital_node.simulation.engine import MethodRun, NodeTrainData
from hospital_node.simulation.privacy import planned_releases
from hospital_node.store.reader import StoreReader
from hospital_node.training.config import ModelConfig, TrainingConfig
from hospital_node.training.model import build_model

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the")

MODEL = ModelConfig()


def test_planned_releases_are_steps_times_peers_over_interval() -> None:
    assert planned_releases(steps=200, peers=2, exchange_interval=4.0) == 100
    assert planned_releases(steps=10, peers=3, exchange_interval=4.0) == 8  # rounded up


# --- MethodRun: per-node privacy, stop sending, resume -----------------------------------------
def method_run(privacy: PrivacyConfig, method: str = "ecl-pdmm", steps: int = 6) -> MethodRun:
    nodes = node_names(4)
    graph = from_edges(nodes, [("N1", "N2"), ("N1", "N3"), ("N1", "N4"), ("N2", "N3")])
    g = torch.Generator().manual_seed(0)
    train = [
        NodeTrainData(
            n, torch.randn(24 + 8 * k, 1, 16, 16, generator=g), torch.zeros(24 + 8 * k, 14)
        )
        for k, n in enumerate(nodes)
    ]
    config = SimulationConfig(
        model=MODEL, training=TrainingConfig(batch_size=4, steps=steps), privacy=privacy
    )
    config = dataclasses.replace(
        config, network=dataclasses.replace(config.network, exchange_interval=1.0)
    )
    torch.manual_seed(0)
    return MethodRun(
        method=method,
        graph=graph,
        train=train,
        config=config,
        init_module=build_model(MODEL),
        steps=steps,
    )


def test_exchange_target_plans_each_node_by_its_degree_and_stops_it_when_spent() -> None:
    run = method_run(PrivacyConfig(mode="exchange", target_epsilon=4.0, clip_norm=0.1))
    sigmas = [p.noise_multiplier for p in run.privacy.exchange]
    assert sigmas[0] > sigmas[1] > sigmas[3]  # degrees 3, 2, 1: more releases, more noise

    run.advance(6 * 4)

    statuses = [run.privacy.status(i) for i in range(4)]
    assert all(0 < s.epsilon <= 4.0 for s in statuses)
    stats = run.transport.stats()
    for i, status in enumerate(statuses):
        sent = sum(x.messages_sent for x in stats.links if x.sender == f"N{i + 1}")
        assert sent == status.releases  # every message is one charged release
        if status.exhausted:
            assert run.privacy.node_state(i, finished=False)[0] == "stopped_sending"
    assert stats.messages_withheld > 0  # some node ran out before the end (interval 1)


@pytest.mark.parametrize(
    "privacy",
    [
        PrivacyConfig(mode="exchange", noise_multiplier=2.0, clip_norm=0.1),
        PrivacyConfig(mode="dpsgd", noise_multiplier=1.0, clip_norm=1.0),
    ],
    ids=["exchange", "dpsgd"],
)
def test_a_resumed_run_spends_exactly_as_much_as_an_uninterrupted_one(privacy, tmp_path) -> None:
    straight = method_run(privacy, steps=4)
    straight.advance(4 * 4)
    first = method_run(privacy, steps=4)
    first.advance(2 * 4)
    save_checkpoint(tmp_path, 2, first.state_dict())
    resumed = method_run(privacy, steps=4)

    resumed.load_state_dict(load_checkpoint_file(next(tmp_path.glob("ckpt-*")))[1])
    resumed.advance(4 * 4)

    # Steps are batched differently around the checkpoint: equal up to float rounding.
    torch.testing.assert_close(resumed.stack.params, straight.stack.params, rtol=1e-4, atol=1e-5)
    for i in range(4):
        assert resumed.privacy.status(i) == straight.privacy.status(i)


# --- ecl-sim flags --------------------------------------------------------------------------
def test_flags_and_set_overrides_resolve_into_the_privacy_config() -> None:
    flags = ["--dp", "exchange", "--epsilon", "8", "--clip", "0.1", "--delta", "1e-6"]
    overrides = ["--set", "privacy.accountant=prv", "--set", "privacy.planned_releases=40"]

    config = resolve_config(build_parser().parse_args([*flags, *overrides]))

    assert config.privacy == PrivacyConfig(
        mode="exchange",
        target_epsilon=8.0,
        clip_norm=0.1,
        delta=1e-6,
        accountant="prv",
        planned_releases=40,
    )
    with pytest.raises(ConfigError, match="planned_releases is for mode 'exchange'"):
        resolve_config(
            build_parser().parse_args(
                ["--dp", "dpsgd", "--noise-multiplier", "1", "--clip", "1",
                 "--planned-releases", "4"]
            )
        )  # fmt: skip


def test_dpsgd_trains_without_label_derived_weights_and_accounts_at_batch_over_n() -> None:
    run = method_run(PrivacyConfig(mode="dpsgd", noise_multiplier=1.1, clip_norm=1.0), steps=3)

    run.advance(3 * 4)

    assert all((t.pos_weight == 1).all() for t in run.trainers)  # counts would escape DP-SGD
    reference = RDPAccountant()
    reference.history = [(1.1, 4 / 48, 3)]  # node N4: 48 records, batch 4
    status = run.privacy.status(3)
    assert status.releases == 3 and status.delta == pytest.approx(1e-5)
    assert status.epsilon == pytest.approx(reference.get_epsilon(delta=1e-5))


# --- ecl-sim end to end ------------------------------------------------------------------------
TINY = [
    "--steps", "4", "--quiet", "--methods", "ecl-pdmm,centralized", "--clip", "1",
    "--set", "synth.sites=3", "--set", "synth.missing_per_site=0",
    "--set", "synth.per_site=24", "--set", "synth.test_size=48",
    "--set", "synth.size=64", "--set", "data.image_size=32",
    "--set", "evaluation.every=2", "--set", "training.checkpoint_every=2",
    "--set", "evaluation.bootstrap=10", "--set", "network.topology=full",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim-exchange")
    assert main(["--out", str(out), *TINY, "--dp", "exchange", "--noise-multiplier", "1"]) == 0
    return out


def privacy_rows(out: Path):
    with StoreReader.open_readonly(out / "results.sqlite") as reader:
        run_id = str(reader.list_runs().iloc[0]["run_id"])
        return reader.privacy(run_id), reader.run_info(run_id)


def test_ecl_sim_with_exchange_dp_records_epsilon_per_site(tiny_data: Path) -> None:
    rows, info = privacy_rows(tiny_data)

    assert sorted(rows["site"]) == ["N1", "N2", "N3"]  # centralized pools data: no figure
    assert (rows["mode"] == "exchange").all() and (rows["epsilon"] > 0).all()
    assert (rows["noise_multiplier"] == 1.0).all() and (rows["releases"] > 0).all()
    assert info.privacy["mode"] == "exchange"
    table = (tiny_data / "report" / "comparison.md").read_text()
    assert "(exchange)" in table and "| centralized |" in table


def test_ecl_sim_with_dpsgd_records_record_level_epsilon(tiny_data: Path, tmp_path) -> None:
    args = ["--data", str(tiny_data / "data"), "--out", str(tmp_path), *TINY]
    assert main([*args, "--dp", "dpsgd", "--noise-multiplier", "1.5"]) == 0

    rows, _ = privacy_rows(tmp_path)

    assert sorted(rows["site"]) == ["N1", "N2", "N3", "all"]
    assert (rows["mode"] == "dpsgd").all()
    assert (rows["epsilon"] > 0).all() and (rows["noise_multiplier"] == 1.5).all()
    assert (rows["releases"] == 4).all()  # one accounted step per local step (centralized too)
    assert not rows["exhausted"].any()
