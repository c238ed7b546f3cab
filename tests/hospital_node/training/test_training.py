"""The one training path: seeded batches, augmentation, the vmapped step, the initial model."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from hospital_node.training.augment import BatchAugmenter
from hospital_node.training.batches import (
    PoissonSampler,
    ShuffledSampler,
    SiteBatches,
    stream_generator,
    stream_seed,
)
from hospital_node.training.config import AugmentConfig, ModelConfig, TrainingConfig
from hospital_node.training.model import build_model, initial_model
from hospital_node.training.step import HospitalTrainer, ModelStack
from hospital_node.training.weights import WeightsError, load_weights


def site(n: int = 24, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, size, size, generator=g)
    labels = (torch.rand(n, 14, generator=g) < 0.3).float()
    return images, labels


def test_stream_seeds_depend_on_seed_hospital_and_stream_only() -> None:
    assert stream_seed(0, "N1", 1) == stream_seed(0, "N1", 1)
    seeds = {stream_seed(s, n, k) for s in (0, 1) for n in ("N1", "N2") for k in (1, 2)}
    assert len(seeds) == 8
    assert 0 <= stream_seed(2**40, "N1", 1) < 2**63


def test_shuffled_sampler_visits_every_item_once_per_epoch_and_resumes() -> None:
    sampler = ShuffledSampler(num_items=10, batch_size=4, generator=stream_generator(0, "N1", 1))
    first_epoch = torch.cat([sampler.next_indices() for _ in range(2)]).tolist()
    state = sampler.state_dict()
    rest = [sampler.next_indices() for _ in range(3)]
    resumed = ShuffledSampler(num_items=10, batch_size=4, generator=torch.Generator())
    resumed.load_state_dict(state)
    assert len(set(first_epoch)) == 8
    assert all(torch.equal(a, resumed.next_indices()) for a in rest)


def test_poisson_sampler_draws_each_record_at_the_rate() -> None:
    sampler = PoissonSampler(num_items=200, sample_rate=0.1, generator=torch.Generator())
    sizes = [len(sampler.next_indices()) for _ in range(300)]
    assert sum(sizes) / len(sizes) == pytest.approx(20, rel=0.05)
    assert len(set(sizes)) > 5  # the batch size is random, as the accountant assumes


def test_augmentation_is_seeded_bounded_and_keeps_laterality() -> None:
    images, _ = site(8)
    config = AugmentConfig(enabled=True, probability=1.0)
    first = BatchAugmenter(config, generator=torch.Generator().manual_seed(7))(images)
    torch.manual_seed(123)  # the global RNG must not matter
    again = BatchAugmenter(config, generator=torch.Generator().manual_seed(7))(images)
    other = BatchAugmenter(config, generator=torch.Generator().manual_seed(8))(images)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert float(first.min()) >= 0 and float(first.max()) <= 1
    # a bright left half stays on the left: no flips
    half = torch.zeros(4, 1, 32, 32)
    half[..., :16] = 1
    moved = BatchAugmenter(config, generator=torch.Generator())(half)
    assert (moved[..., :12].mean((1, 2, 3)) > moved[..., 20:].mean((1, 2, 3))).all()
    none = BatchAugmenter(AugmentConfig(enabled=True, probability=0.0), generator=torch.Generator())
    torch.testing.assert_close(none(images), images, rtol=0, atol=1e-5)


def test_site_batches_resume_exactly_with_augmentation() -> None:
    images, labels = site()
    config = TrainingConfig(batch_size=4, augment=AugmentConfig(enabled=True))
    batches = SiteBatches(node="N1", images=images, labels=labels, config=config)
    batches.next_batch()
    state = batches.state_dict()
    expected = [batches.next_batch() for _ in range(3)]
    resumed = SiteBatches(node="N1", images=images, labels=labels, config=config)
    resumed.load_state_dict(state)
    for want in expected:
        got = resumed.next_batch()
        assert torch.equal(got.images, want.images) and torch.equal(got.labels, want.labels)


@pytest.mark.parametrize("head", ["pool", "grid"])
def test_stacked_step_equals_one_model_at_a_time(head: str) -> None:
    config = TrainingConfig(batch_size=4)
    module = initial_model(ModelConfig(head=head), seed=0)
    data = [site(seed=k) for k in range(3)]

    def trainers() -> list[HospitalTrainer]:
        return [
            HospitalTrainer.build(name=f"N{k}", images=i, labels=lab, config=config)
            for k, (i, lab) in enumerate(data)
        ]

    together = ModelStack(module, copies=3).gradients([0, 1, 2], trainers())
    alone_trainers = trainers()
    alone = [ModelStack(module, copies=1).gradients([0], [t])[0] for t in alone_trainers]
    for (g1, l1), (g2, l2) in zip(together, alone, strict=True):
        assert l1 == pytest.approx(l2, rel=1e-5)
        for name in g1:
            torch.testing.assert_close(g1[name], g2[name], rtol=1e-4, atol=1e-6)


def test_positive_weights_come_from_the_site_labels_when_enabled() -> None:
    images, labels = site()
    weighted = HospitalTrainer.build(
        name="N1", images=images, labels=labels, config=TrainingConfig()
    )
    plain = HospitalTrainer.build(
        name="N1", images=images, labels=labels, config=TrainingConfig(positive_weighting=False)
    )
    n_pos = labels.sum(0)
    expected = torch.where(n_pos > 0, (len(labels) - n_pos) / n_pos.clamp(min=1), 1).clamp(max=20)
    torch.testing.assert_close(weighted.pos_weight, expected)
    assert (plain.pos_weight == 1).all()


def test_grid_head_reads_every_cell_of_a_4x4_layout() -> None:
    net = build_model(ModelConfig(head="grid"))
    width = build_model(ModelConfig()).class_layers.out.in_features
    assert net.class_layers.out.in_features == width * 16
    for size in (64, 32):  # the head's size does not depend on the resolution
        assert net(torch.rand(2, 1, size, size)).shape == (2, 14)
    # Each cell has its own weights: a change confined to one corner of the last feature map
    # moves the logits through that cell's slice of the head only.
    features = torch.zeros(1, width, 4, 4)
    corner = features.clone()
    corner[..., 0, 0] = 1.0
    delta = net.class_layers(corner) - net.class_layers(features)
    cell = net.class_layers.out.weight.view(14, width, 4, 4)[..., 0, 0]
    torch.testing.assert_close(delta[0], cell.sum(1))
    with pytest.raises(ValueError, match="model.head"):
        ModelConfig(head="attention")


def test_initial_model_depends_on_the_seed_only() -> None:
    torch.manual_seed(99)
    a = initial_model(ModelConfig(), seed=3).state_dict()
    b = initial_model(ModelConfig(), seed=3).state_dict()
    c = initial_model(ModelConfig(), seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def torchvision_style(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The names torchvision's DenseNet uses, an RGB first convolution and 1,000 classes."""
    out = {}
    for name, value in state.items():
        name = name.replace(".layers.", ".").replace("class_layers.out.", "classifier.")
        if name == "features.conv0.weight":
            value = value.repeat(1, 3, 1, 1) / 3
        if name.startswith("classifier."):
            value = torch.zeros((1000, *value.shape[1:]))
        out[name] = value
        if "norm" in name and name.endswith(".weight"):  # BatchNorm statistics are ignored
            out[name.replace(".weight", ".running_mean")] = torch.zeros_like(value)
    return out


def test_pretrained_weights_load_from_a_local_file(tmp_path) -> None:
    source = build_model(ModelConfig(architecture="densenet121"))
    own = tmp_path / "own.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(own))
    foreign = tmp_path / "imagenet.pth"
    torch.save(torchvision_style(source.state_dict()), foreign)

    config = ModelConfig(architecture="densenet121", weights=str(own))
    exact = initial_model(config, seed=5).state_dict()
    target = initial_model(ModelConfig(architecture="densenet121"), seed=5)
    report = load_weights(target, foreign)

    assert all(torch.equal(exact[k], v) for k, v in source.state_dict().items())
    assert report.head_kept == ("class_layers.out.weight", "class_layers.out.bias")
    assert report.adapted_channels == ("features.conv0.weight",)
    grid = initial_model(ModelConfig(architecture="densenet121", head="grid"), seed=5)
    assert load_weights(grid, foreign).head_kept == report.head_kept  # backbone taken
    torch.testing.assert_close(
        target.state_dict()["features.conv0.weight"], source.state_dict()["features.conv0.weight"]
    )


def test_a_mismatched_or_unreadable_weights_file_is_refused_clearly(tmp_path) -> None:
    compact = tmp_path / "compact.safetensors"
    save_file(build_model(ModelConfig()).state_dict(), str(compact))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a weights file")
    densenet = build_model(ModelConfig(architecture="densenet121"))
    with pytest.raises(WeightsError, match="does not fit model.architecture"):
        load_weights(densenet, compact)
    with pytest.raises(WeightsError, match="cannot read"):
        load_weights(densenet, junk)
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(densenet, tmp_path / "missing.safetensors")
