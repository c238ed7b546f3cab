"""`hospital-node run` with `[training] device = "cuda"` on a machine without a GPU."""

from __future__ import annotations

import logging

import pytest
import torch

from hospital_node import cli


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_a_node_asked_for_cuda_without_a_gpu_stops_before_reading_its_site(
    tmp_path, build_network, caplog
):
    paths = build_network(tmp_path / "net")

    with caplog.at_level(logging.ERROR):
        code = cli.main(["run", "--config", str(paths["N1"]), "--set", "training.device=cuda"])

    assert code == 2
    assert "sees no CUDA GPU" in caplog.text
