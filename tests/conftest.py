from __future__ import annotations

import os

import pytest
import torch

# Two CPU cores in CI: keep each test single-threaded and deterministic.
torch.set_num_threads(int(os.environ.get("ALIGNKIT_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
