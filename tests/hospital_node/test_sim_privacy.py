"""Privacy in the simulation: DP-SGD gradients, per-node planning, resume, ecl-sim end to end."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from consensus.privacy import PrivacyConfig
from consensus.topology import from_edges, node_names
from hospital_node.checkpoint import load_checkpoint_file, save_checkpoint
from hospital_node.configio import ConfigError
from hospital_node.model import ModelConfig, build_model
from hospital_node.sim_cli import build_parser, main, resolve_config
from hospital_node.sim_config import SimulationConfig, TrainingConfig
from hospital_node.sim_engine import MethodRun, NodeTrainData
from hospital_node.sim_privacy import SimulatedDpsgd, planned_releases
from hospital_node.store_read import StoreReader
from hospital_node.train import (
    FunctionalModel,
    clip_per_example,
    private_gradients,
    stacked_parameters,
)

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the")

MODEL = ModelConfig(image_size=16)


def batch(models: int = 2, examples: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(models, examples, 1, 16, 16, generator=g)
    labels = (torch.rand(models, examples, 14, generator=g) < 0.3).float()
    return images, labels


@pytest.fixture(scope="module")
def model() -> tuple[FunctionalModel, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    module = build_model(MODEL)
    return FunctionalModel(module), stacked_parameters(module, 2)


def global_norms(per_example: dict[str, torch.Tensor]) -> torch.Tensor:
    return (
        torch.stack([(g.double().flatten(2) ** 2).sum(-1) for g in per_example.values()])
        .sum(0)
        .sqrt()
    )


# --- per-example DP-SGD gradient ----------------------------------------------------------------
def test_private_gradient_is_the_mean_gradient_without_clipping_or_noise(model) -> None:
    functional, params = model
    images, labels = batch()
    per_example, losses = functional.stacked_per_example_gradients(params, images, labels)
    generators = [torch.Generator().manual_seed(k) for k in range(2)]

    private = private_gradients(
        per_example, clip_norm=1e9, noise_multipliers=[0.0, 0.0], generators=generators
    )

    mean, mean_loss = functional.stacked_gradients(params, images, labels, None)
    for name, grad in mean.items():
        torch.testing.assert_close(private[name], grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(losses.mean(1), mean_loss, rtol=1e-5, atol=1e-6)


def test_per_example_gradients_are_clipped_to_the_bound(model) -> None:
    functional, params = model
    per_example, _ = functional.stacked_per_example_gradients(params, *batch())
    clip = 0.5 * float(global_norms(per_example).median())

    clipped = clip_per_example(per_example, clip)

    norms, before = global_norms(clipped), global_norms(per_example)
    assert (norms <= clip).all()
    small = before < clip  # examples inside the bound are left as they are
    torch.testing.assert_close(norms[small], before[small], rtol=1e-5, atol=0)


@settings(max_examples=40, deadline=None)
@given(scale=st.floats(1e-4, 1e4), clip=st.floats(1e-3, 1e3), seed=st.integers(0, 1000))
def test_clipping_bound_holds_for_any_scale(scale: float, clip: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    per_example = {
        "a": scale * torch.randn(2, 5, 3, 4, generator=g),
        "b": scale * torch.randn(2, 5, 7, generator=g),
    }
    assert (global_norms(clip_per_example(per_example, clip)) <= clip).all()


def test_a_nodes_noise_does_not_depend_on_who_shares_its_batch(model) -> None:
    functional, params = model
    per_example, _ = functional.stacked_per_example_gradients(params, *batch())
    together = private_gradients(
        per_example,
        clip_norm=1.0,
        noise_multipliers=[1.0, 1.0],
        generators=[torch.Generator().manual_seed(k) for k in (10, 11)],
    )
    alone = private_gradients(
        {k: v[1:] for k, v in per_example.items()},
        clip_norm=1.0,
        noise_multipliers=[1.0],
        generators=[torch.Generator().manual_seed(11)],
    )
    noiseless = private_gradients(
        {k: v[1:] for k, v in per_example.items()},
        clip_norm=1.0,
        noise_multipliers=[0.0],
        generators=[torch.Generator()],
    )
    for name in together:
        torch.testing.assert_close(together[name][1:], alone[name], rtol=0, atol=0)
    noise = torch.cat([(alone[k] - noiseless[k]).flatten() for k in alone]) * 4  # x batch
    assert noise.std().item() == pytest.approx(1.0, rel=0.05)  # sigma * C


# --- accounting and planning -------------------------------------------------------------------
def test_dpsgd_accounts_each_step_at_batch_over_n(model) -> None:
    functional, params = model
    config = PrivacyConfig(mode="dpsgd", noise_multiplier=1.1, clip_norm=1.0)
    dpsgd = SimulatedDpsgd(config, train_sizes=[100, 400], batch_size=4, steps=10, seed=0)

    for _ in range(3):
        dpsgd.gradients(functional, params, *batch(), nodes=[0, 1])

    reference = RDPAccountant()
    reference.history = [(1.1, 0.01, 3)]
    status = dpsgd.status(1)
    assert status.releases == 3 and status.delta == pytest.approx(1e-5)
    assert status.epsilon == pytest.approx(reference.get_epsilon(delta=1e-5))


def test_dpsgd_target_epsilon_is_met_after_the_planned_steps() -> None:
    config = PrivacyConfig(mode="dpsgd", target_epsilon=4.0, clip_norm=1.0)
    dpsgd = SimulatedDpsgd(config, train_sizes=[200], batch_size=8, steps=50, seed=0)
    reference = RDPAccountant()
    reference.history = [(dpsgd.nodes[0].noise_multiplier, 8 / 200, 50)]
    assert 3.8 < reference.get_epsilon(delta=1e-5) <= 4.0


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
    torch.testing.assert_close(resumed.params, straight.params, rtol=1e-4, atol=1e-5)
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
    with pytest.raises(ConfigError, match="positive_weighting"):  # label counts escape DP-SGD
        resolve_config(
            build_parser().parse_args(
                ["--dp", "dpsgd", "--noise-multiplier", "1", "--clip", "1",
                 "--set", "training.positive_weighting=true"]
            )
        )  # fmt: skip


# --- ecl-sim end to end ------------------------------------------------------------------------
TINY = [
    "--steps", "4", "--quiet", "--methods", "ecl-pdmm,centralized", "--clip", "1",
    "--set", "data.synth_sites=3", "--set", "data.synth_missing_per_site=0",
    "--set", "data.synth_per_site=24", "--set", "data.synth_test_size=48",
    "--set", "data.synth_size=64", "--set", "data.image_size=32",
    "--set", "training.eval_every=2", "--set", "training.checkpoint_every=2",
    "--set", "training.bootstrap=10", "--set", "network.topology=full",
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
