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

@pytest.fixture(scope="module")
def one_thread():
    """torch on this run's thread count (1, or 2 in `make test`'s numerical pass) for a module of tiny
    networks: they gain little from a second thread and lose up to 10x when other work holds the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("P3D_TEST_THREADS") or 1))
    yield
    torch.set_num_threads(threads)


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


SHARED_SKIP = "shared data not found at"


def shared_data_required() -> bool:
    """CI lays ../shared beside the checkout and sets CI=true: there a missing ../shared/data is a broken
    CI, not a reason to skip the tests that check against real data."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data next to the checkout: a visible skip without it, a failure under CI=true."""
    if not SHARED_DATA.is_dir():
        if shared_data_required():
            pytest.fail(f"CI=true but {SHARED_DATA} is missing: CI must lay ../shared beside the checkout")
        pytest.skip(f"{SHARED_SKIP} {SHARED_DATA}")
    return SHARED_DATA


def pytest_terminal_summary(terminalreporter):
    """One line saying how many tests did not check against real data, so a run without ../shared
    cannot pass for a full one."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if SHARED_SKIP in str(r.longrepr)]
    if skipped:
        terminalreporter.write_line(f"{len(skipped)} tests skipped: {SHARED_SKIP} {SHARED_DATA} "
                                    "(they run, and its absence fails, under CI=true)")
