import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is faster than handing each small op to two (use it with
    `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    yield from _threads(1)


@pytest.fixture
def two_threads():
    """Real models (the bundled ones): both cores."""
    yield from _threads(2)
