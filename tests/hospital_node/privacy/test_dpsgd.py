"""DP-SGD, the one mechanism of nodes and simulation: per-example gradients, clip, mask, noise."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant, create_accountant
from torch import nn
from torch.nn import functional as F

from consensus.privacy_config import PrivacyConfig, PrivacyConfigError
from hospital_node.privacy.accounting import RecordLevelPrivacy
from hospital_node.privacy.dpsgd import (
    DpsgdMechanism,
    clip_per_example,
    planned_steps,
    private_gradients,
    validate_model,
)
from hospital_node.training.config import ModelConfig, TrainingConfig
from hospital_node.training.functional import FunctionalModel, stacked_parameters
from hospital_node.training.model import build_model
from hospital_node.training.step import HospitalTrainer, ModelStack

pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha"),
]
DPSGD = PrivacyConfig(mode="dpsgd", noise_multiplier=1.1, clip_norm=1.0)


def batch(models: int = 2, examples: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(models, examples, 1, 16, 16, generator=g)
    labels = (torch.rand(models, examples, 14, generator=g) < 0.3).float()
    return images, labels


@pytest.fixture(scope="module")
def model() -> tuple[FunctionalModel, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    module = build_model(ModelConfig())
    return FunctionalModel(module), stacked_parameters(module, 2)


def mechanism(sigma: float, seed: int = 0, expected: float = 4.0) -> DpsgdMechanism:
    privacy = RecordLevelPrivacy(
        accountant=create_accountant(mechanism="rdp"),
        noise_multiplier=sigma,
        clip_norm=1.0,
        sample_rate=0.1,
        delta=1e-5,
    )
    return DpsgdMechanism(privacy, torch.Generator().manual_seed(seed), expected)


def global_norms(per_example: dict[str, torch.Tensor]) -> torch.Tensor:
    squares = [(g.double().flatten(2) ** 2).sum(-1) for g in per_example.values()]
    return torch.stack(squares).sum(0).sqrt()


def test_per_example_gradients_match_opacus_grad_samples() -> None:
    torch.manual_seed(0)
    module = build_model(ModelConfig())
    images, labels = batch(models=1, examples=3)
    params = stacked_parameters(module, 1)
    ours, _ = FunctionalModel(module).stacked_per_example_gradients(params, images, labels)
    wrapped = GradSampleModule(module, loss_reduction="sum")
    F.binary_cross_entropy_with_logits(wrapped(images[0]), labels[0], reduction="sum").backward()
    for name, p in module.named_parameters():
        # each example's loss is a mean over the 14 findings; Opacus's is their sum
        torch.testing.assert_close(ours[name][0] * 14, p.grad_sample, rtol=1e-4, atol=1e-5)


def test_without_clipping_or_noise_the_private_gradient_is_the_masked_mean(model) -> None:
    functional, params = model
    images, labels = batch()
    per_example, _ = functional.stacked_per_example_gradients(params, images, labels)
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0]])  # the second batch is padded by two
    huge = [mechanism(0.0, expected=4.0), mechanism(0.0, expected=2.0)]
    for m in huge:
        m.privacy.clip_norm = 1e9

    private = private_gradients(per_example, mask, huge)

    ones = torch.ones(2, 14)
    full, _ = functional.stacked_gradients(params, images, labels, ones)
    half, _ = functional.stacked_gradients(params, images[:, :2], labels[:, :2], ones)
    for name in private:
        torch.testing.assert_close(private[name][0], full[name][0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(private[name][1], half[name][1], rtol=1e-4, atol=1e-6)
    assert [m.privacy.steps for m in huge] == [1, 1]  # one accountant step each


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


def test_a_hospitals_noise_does_not_depend_on_who_shares_its_computation(model) -> None:
    functional, params = model
    per_example, _ = functional.stacked_per_example_gradients(params, *batch())
    second = {k: v[1:] for k, v in per_example.items()}
    mask = torch.ones(2, 4)

    together = private_gradients(per_example, mask, [mechanism(1.0, 10), mechanism(1.0, 11)])
    alone = private_gradients(second, mask[1:], [mechanism(1.0, 11)])
    noiseless = private_gradients(second, mask[1:], [mechanism(0.0)])

    for name in together:
        torch.testing.assert_close(together[name][1:], alone[name], rtol=0, atol=0)
    noise = torch.cat([(alone[k] - noiseless[k]).flatten() for k in alone]) * 4  # x q n
    assert noise.std().item() == pytest.approx(1.0, rel=0.05)  # sigma * C


def test_a_node_stack_trains_with_poisson_batches_and_accounts_each_step() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    images = torch.rand(40, 1, 16, 16, generator=g)
    labels = (torch.rand(40, 14, generator=g) < 0.3).float()
    training = TrainingConfig(batch_size=4)
    dpsgd = DpsgdMechanism.from_config(
        DPSGD, n_records=40, batch_size=4, steps=0, generator=torch.Generator().manual_seed(2)
    )
    trainer = HospitalTrainer.build(
        name="N1", images=images, labels=labels, config=training, dpsgd=dpsgd
    )
    stack = ModelStack(build_model(ModelConfig()), copies=1)
    sizes = []
    for _ in range(30):
        ((grads, loss),) = stack.gradients([0], [trainer])
        assert all(torch.isfinite(g).all() for g in grads.values())
        sizes.append(0 if loss is None else 1)

    reference = RDPAccountant()
    reference.history = [(1.1, 0.1, 30)]
    assert dpsgd.privacy.steps == 30 and dpsgd.expected_batch_size == pytest.approx(4.0)
    assert dpsgd.privacy.epsilon() == pytest.approx(reference.get_epsilon(delta=1e-5))
    assert (trainer.pos_weight == 1).all()  # no label-derived weights under DP-SGD


def test_target_epsilon_is_met_over_the_planned_steps_or_epochs() -> None:
    by_steps = PrivacyConfig(mode="dpsgd", target_epsilon=4.0, clip_norm=1.0)
    by_epochs = PrivacyConfig(mode="dpsgd", target_epsilon=4.0, clip_norm=1.0, planned_epochs=2)
    generator = torch.Generator()
    steps = DpsgdMechanism.from_config(
        by_steps, n_records=200, batch_size=8, steps=50, generator=generator
    )
    epochs = DpsgdMechanism.from_config(
        by_epochs, n_records=200, batch_size=8, steps=0, generator=generator
    )
    assert planned_steps(by_epochs, steps=0, rate=8 / 200) == 50  # 2 epochs at q = 0.04
    assert epochs.privacy.noise_multiplier == steps.privacy.noise_multiplier
    reference = RDPAccountant()
    reference.history = [(steps.privacy.noise_multiplier, 8 / 200, 50)]
    assert 3.8 < reference.get_epsilon(delta=1e-5) <= 4.0
    with pytest.raises(PrivacyConfigError, match="planned_epochs"):
        DpsgdMechanism.from_config(
            by_steps, n_records=200, batch_size=8, steps=0, generator=generator
        )


def test_batchnorm_and_eval_mode_models_are_refused_naming_the_fix() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(
        PrivacyConfigError, match=r"offending layers \['1'\].*use GroupNorm.*ModuleValidator.fix"
    ):
        validate_model(model)
    groupnorm = build_model(ModelConfig())
    validate_model(groupnorm)  # the project's networks pass
    with pytest.raises(PrivacyConfigError, match=r"model.train\(\)"):
        validate_model(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)).eval())


def test_a_non_dpsgd_config_is_refused() -> None:
    exchange = PrivacyConfig(mode="exchange", noise_multiplier=1.0, clip_norm=1.0)
    with pytest.raises(PrivacyConfigError, match="dpsgd"):
        DpsgdMechanism.from_config(
            exchange, n_records=10, batch_size=2, steps=5, generator=torch.Generator()
        )
