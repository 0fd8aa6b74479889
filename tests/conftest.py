"""Fixtures shared by every test package."""
import os
from pathlib import Path

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "numerical: compares float results of networks or solvers; `make test` "
                                       "runs these a second time with 2 threads (docs/CONTRIBUTING.md)")
    threads = os.environ.get("P3D_TEST_THREADS")  # the thread count of this run; fixtures that pin it use it too
    if threads:
        import torch

        torch.set_num_threads(int(threads))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data next to the checkout; tests that need it skip cleanly without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
