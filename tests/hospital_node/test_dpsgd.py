"""Tests of record-level DP-SGD: Opacus wiring, MONAI layers, BatchNorm refused, group privacy."""

from __future__ import annotations

import json
import math

import pytest
import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from scipy.optimize import brentq
from scipy.stats import norm
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from consensus.privacy import PrivacyConfig, PrivacyConfigError
from hospital_node.dpsgd import group_epsilon, make_private, max_images_per_patient
from hospital_node.model import ModelConfig, build_model

pytestmark = [
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha"),
]

DPSGD = PrivacyConfig(mode="dpsgd", noise_multiplier=0.5, clip_norm=1.0)


def tiny_groupnorm_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.GroupNorm(4, 8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )


def toy_loader(n: int = 64, batch_size: int = 16, size: int = 8) -> DataLoader:
    """Two classes of images that differ in brightness: learnable in a few steps."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    images = torch.randn(n, 1, size, size, generator=g) * 0.3 + labels.view(-1, 1, 1, 1).float()
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size)


def full_loss(model: nn.Module, loader: DataLoader) -> float:
    images, labels = loader.dataset.tensors
    with torch.no_grad():
        return float(F.cross_entropy(model(images), labels))


def test_dpsgd_trains_a_groupnorm_model_and_reports_epsilon():
    torch.manual_seed(0)
    model = tiny_groupnorm_net()
    loader = toy_loader()
    before = full_loss(model, loader)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    private = make_private(
        model, optimizer, loader, config=DPSGD, generator=torch.Generator().manual_seed(1)
    )
    for _ in range(3):
        for images, labels in private.data_loader:
            private.optimizer.zero_grad()
            F.cross_entropy(private.model(images), labels).backward()
            private.optimizer.step()
    assert full_loss(private.model, loader) < 0.8 * before
    assert private.privacy.steps == 12
    opacus = RDPAccountant()
    opacus.history = [(0.5, 0.25, 12)]
    assert private.privacy.epsilon() == pytest.approx(opacus.get_epsilon(delta=1e-5), rel=1e-12)
    assert private.privacy.epsilon() > 0
    summary = json.loads(json.dumps(private.privacy.summary()))
    assert summary["unit"] == "record" and "patient" in summary["caveat"]


def test_monai_densenet_per_example_gradients_match_autograd():
    torch.manual_seed(0)
    model = build_model(ModelConfig(image_size=32))
    images = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    targets = (torch.rand(3, 14, generator=torch.Generator().manual_seed(3)) > 0.7).float()
    wrapped = GradSampleModule(model, loss_reduction="sum")
    F.binary_cross_entropy_with_logits(wrapped(images), targets, reduction="sum").backward()
    per_example = {name: p.grad_sample.clone() for name, p in model.named_parameters()}
    wrapped.disable_hooks()
    for i in range(3):
        model.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(images[i : i + 1]), targets[i : i + 1])
        (loss * targets.shape[1]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(per_example[name][i], p.grad, rtol=1e-4, atol=1e-5)


def test_monai_densenet_takes_a_private_step():
    torch.manual_seed(0)
    model = build_model(ModelConfig(image_size=32))
    images = torch.randn(16, 1, 32, 32)
    targets = (torch.rand(16, 14) > 0.8).float()
    loader = DataLoader(TensorDataset(images, targets), batch_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    private = make_private(
        model, optimizer, loader, config=DPSGD, generator=torch.Generator().manual_seed(0)
    )
    for batch_images, batch_targets in private.data_loader:
        private.optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(private.model(batch_images), batch_targets)
        loss.backward()
        private.optimizer.step()
    assert private.privacy.steps == 2
    assert private.privacy.epsilon() > 0


def test_batchnorm_model_is_refused_naming_the_layer():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    optimizer = torch.optim.SGD(model[0].parameters(), lr=0.1)
    with pytest.raises(
        PrivacyConfigError, match=r"offending layers \['1'\].*use GroupNorm.*ModuleValidator.fix"
    ):
        make_private(model, optimizer, toy_loader(), config=DPSGD, generator=torch.Generator())


def test_wrong_mode_and_randomness_choices_are_refused():
    model, loader = tiny_groupnorm_net(), toy_loader()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    exchange = PrivacyConfig(mode="exchange", noise_multiplier=1.0, clip_norm=1.0)
    with pytest.raises(PrivacyConfigError, match="dpsgd"):
        make_private(model, optimizer, loader, config=exchange, generator=torch.Generator())
    with pytest.raises(PrivacyConfigError, match="secret seed"):
        make_private(model, optimizer, loader, config=DPSGD)
    with pytest.raises(PrivacyConfigError, match="torchcsprng"):
        make_private(model, optimizer, loader, config=DPSGD, secure_mode=True)
    with pytest.raises(PrivacyConfigError, match=r"model.train\(\)"):
        make_private(model.eval(), optimizer, loader, config=DPSGD, generator=torch.Generator())


def test_target_epsilon_is_met_after_the_planned_epochs():
    torch.manual_seed(0)
    model, loader = tiny_groupnorm_net(), toy_loader()
    config = PrivacyConfig(mode="dpsgd", target_epsilon=3.0, clip_norm=1.0)
    private = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        loader,
        config=config,
        epochs=2,
        generator=torch.Generator().manual_seed(0),
    )
    for _ in range(2):
        for images, labels in private.data_loader:
            private.optimizer.zero_grad()
            F.cross_entropy(private.model(images), labels).backward()
            private.optimizer.step()
    assert 2.9 <= private.privacy.epsilon() <= 3.0


def test_state_dict_round_trip_keeps_the_spent_epsilon():
    torch.manual_seed(0)
    model, loader = tiny_groupnorm_net(), toy_loader()
    private = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        loader,
        config=DPSGD,
        generator=torch.Generator(),
    )
    private.privacy.accountant.step(noise_multiplier=0.5, sample_rate=0.25)
    state = json.loads(json.dumps(private.privacy.state_dict()))
    fresh_model = tiny_groupnorm_net()
    restarted = make_private(
        fresh_model,
        torch.optim.SGD(fresh_model.parameters(), lr=0.1),
        loader,
        config=DPSGD,
        generator=torch.Generator(),
    )
    restarted.privacy.load_state_dict(state)
    assert restarted.privacy.epsilon() == private.privacy.epsilon() > 0


# --- patient-level (group) privacy ------------------------------------------------------------


def exact_gaussian_epsilon(opacus_multiplier: float, delta: float) -> float:
    """Tight epsilon of one Gaussian mechanism (Balle & Wang 2018), without Opacus."""
    mu = 1.0 / opacus_multiplier

    def excess(eps: float) -> float:
        return (
            norm.cdf(-eps / mu + mu / 2) - math.exp(eps + norm.logcdf(-eps / mu - mu / 2)) - delta
        )

    return brentq(excess, 0.0, 600.0)


def test_group_of_one_is_the_record_level_rdp_figure():
    history = [(1.0, 0.01, 1000)]
    opacus = RDPAccountant()
    opacus.history = history
    assert group_epsilon(history, group_size=1, delta=1e-5) == opacus.get_epsilon(delta=1e-5)


def test_group_epsilon_grows_with_the_group_and_matches_golden():
    history = [(1.0, 0.01, 1000)]
    by_size = [group_epsilon(history, group_size=k, delta=1e-5) for k in (1, 2, 3, 5)]
    assert by_size == sorted(by_size)
    assert by_size[1] == pytest.approx(5.149139569573663, rel=1e-3)
    assert group_epsilon(history, group_size=10, delta=1e-5) == math.inf


@pytest.mark.parametrize(("multiplier", "group"), [(4.0, 2), (8.0, 3), (20.0, 4)])
def test_group_bound_is_never_below_the_exact_group_epsilon(multiplier, group):
    # Without sampling a group of k is exactly a Gaussian with k-fold sensitivity.
    bound = group_epsilon([(multiplier, 1.0, 1)], group_size=group, delta=1e-5)
    assert bound >= exact_gaussian_epsilon(multiplier / group, 1e-5)


def test_max_images_per_patient():
    assert max_images_per_patient(["p1", "p2", "p1", "p3", "p1"]) == 3
    assert max_images_per_patient([]) == 1
