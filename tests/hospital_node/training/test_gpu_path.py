"""The GPU path on the CPU: bf16 autocast, channels_last, pinned copies, the device checks.

Nothing here needs a GPU: bf16 autocast and channels_last run on the CPU as well, pinning is
a decision tested as such, and CUDA asked for on a machine without it must fail clearly.
"""

from __future__ import annotations

import pytest
import torch

from hospital_node.devices import (
    DeviceError,
    pins_memory,
    resolve_device,
    stack_to_device,
    to_device,
)
from hospital_node.privacy.dpsgd import clip_per_example
from hospital_node.training.config import ModelConfig, TrainingConfig
from hospital_node.training.functional import FunctionalModel, stacked_parameters
from hospital_node.training.model import initial_model

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")


def batch(models: int, examples: int = 6, size: int = 16) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    images = torch.rand(models, examples, 1, size, size, generator=g)
    labels = (torch.rand(models, examples, 14, generator=g) < 0.3).float()
    return images, labels, torch.ones(models, 14)


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads.values()])


@pytest.fixture(scope="module")
def module() -> torch.nn.Module:
    return initial_model(ModelConfig(), seed=0)


def test_bf16_autocast_keeps_float32_parameters_gradients_and_loss_close_to_fp32(module):
    params = stacked_parameters(module, 2)
    images, labels, pos = batch(2)

    ref, ref_loss = FunctionalModel(module).stacked_gradients(params, images, labels, pos)
    bf16 = FunctionalModel(module, precision="bf16")
    grads, loss = bf16.stacked_gradients(params, images, labels, pos)

    assert torch.isfinite(loss).all() and loss.dtype == torch.float32
    assert {g.dtype for g in grads.values()} == {torch.float32}
    assert {p.dtype for p in params.values()} == {torch.float32}
    assert torch.allclose(loss, ref_loss, atol=2e-2)
    cosine = torch.nn.functional.cosine_similarity(flat(grads), flat(ref), dim=0)
    assert cosine > 0.98  # bfloat16 keeps 8 mantissa bits: close, not equal
    assert not torch.equal(flat(grads), flat(ref))  # autocast really ran
    probs = bf16.stacked_predict(params, images[0])
    assert probs.dtype == torch.float32 and probs.shape == (2, 6, 14)


def test_bf16_per_example_gradients_are_float32_and_clip_to_the_bound(module):
    params = stacked_parameters(module, 2)
    images, labels, _ = batch(2, examples=4)

    per_example, losses = FunctionalModel(module, precision="bf16").stacked_per_example_gradients(
        params, images, labels
    )
    clipped = clip_per_example(per_example, 0.5)

    assert {g.dtype for g in per_example.values()} == {torch.float32}
    assert torch.isfinite(losses).all()
    norms = torch.sqrt(sum((g.flatten(2) ** 2).sum(-1) for g in clipped.values()))
    assert (norms <= 0.5 * (1 + 1e-5)).all()


@pytest.mark.parametrize("models", [1, 2])
def test_channels_last_gives_the_default_layouts_results(module, models):
    params = stacked_parameters(module, models)
    images, labels, pos = batch(models)

    ref, ref_loss = FunctionalModel(module).stacked_gradients(params, images, labels, pos)
    nhwc = FunctionalModel(module, channels_last=True)
    grads, loss = nhwc.stacked_gradients(params, images, labels, pos)

    assert torch.allclose(loss, ref_loss, atol=1e-5)
    for name, grad in grads.items():
        assert grad.is_contiguous()  # the consensus update reads flat slices
        assert torch.allclose(grad, ref[name], atol=1e-5, rtol=1e-4), name
    expected = FunctionalModel(module).stacked_predict(params, images[0])
    assert torch.allclose(nhwc.stacked_predict(params, images[0]), expected, atol=1e-5)


def test_pinning_is_for_cuda_only_and_the_cpu_path_copies_nothing():
    tensor = torch.rand(3, 1, 4, 4)

    assert pins_memory(torch.device("cuda")) and pins_memory(torch.device("cuda:1"))
    assert not pins_memory(torch.device("cpu"))
    assert to_device(tensor, torch.device("cpu")) is tensor
    stacked = stack_to_device([tensor, tensor + 1], torch.device("cpu"))
    assert torch.equal(stacked, torch.stack([tensor, tensor + 1])) and not stacked.is_pinned()


@NO_CUDA
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_refused_saying_what_to_set(name):
    with pytest.raises(DeviceError, match="training.device = 'cpu'"):
        resolve_device(name)


def test_device_and_precision_are_checked():
    assert resolve_device("cpu", precision="bf16") == torch.device("cpu")
    with pytest.raises(DeviceError, match="not a torch device"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="training.precision"):
        TrainingConfig(precision="fp16")
    assert TrainingConfig().precision == "fp32" and not TrainingConfig().channels_last


@NO_CUDA
def test_ecl_sim_refuses_cuda_before_reading_data(tmp_path, capsys):
    from hospital_node.simulation.cli import main

    code = main(["--data", str(tmp_path / "absent"), "--out", str(tmp_path / "out"),
                 "--device", "cuda", "--quiet"])  # fmt: skip

    assert code == 2
    assert "sees no CUDA GPU" in capsys.readouterr().err


def test_gpu_benchmark_smoke_mode_runs_on_the_cpu(tmp_path, capsys):
    from benchmarks.bench_gpu import main

    out = tmp_path / "gpu.json"
    code = main(["--device", "cpu", "--architecture", "compact", "--image-size", "32",
                 "--steps", "2", "--warmup", "1", "--hospitals", "2", "--batch-size", "2",
                 "--images-per-hospital", "8", "--epochs", "3", "--out", str(out)])  # fmt: skip

    assert code == 0 and out.is_file()
    printed = capsys.readouterr().out
    assert "img/s" in printed and "ratio hospitals / centralized" in printed
    assert "3 epochs" in printed


@NO_CUDA
def test_gpu_benchmark_refuses_without_cuda(tmp_path, capsys):
    from benchmarks.bench_gpu import main

    assert main(["--out", str(tmp_path / "gpu.json")]) == 2
    assert "sees no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "gpu.json").exists()
