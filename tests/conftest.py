"""Suite-wide test settings: one thread per test process and a private decoded-image cache."""

from __future__ import annotations

import os

import pytest
import torch

# Tests share 2 cores with each other's subprocesses; one intra-op thread keeps timings sane.
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _private_image_cache(tmp_path_factory: pytest.TempPathFactory):
    """Decoded-image caches go to a temp folder, never to the user's ~/.cache."""
    previous = os.environ.get("ECL_CACHE_DIR")
    os.environ["ECL_CACHE_DIR"] = str(tmp_path_factory.mktemp("ecl-cache"))
    yield
    if previous is None:
        os.environ.pop("ECL_CACHE_DIR", None)
    else:
        os.environ["ECL_CACHE_DIR"] = previous
