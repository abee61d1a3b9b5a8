"""Fixtures and pytest hooks; the helpers themselves are in helpers.py."""

import pytest

from helpers import COUNTS, mount_tmpfs, small_config, umount


@pytest.fixture
def small():
    return small_config


def pytest_configure(config):
    # the test models are tiny: one thread is fastest, and immune to another process
    # holding the other core (OpenMP's spinning threads slow down 100x when oversubscribed)
    import torch
    torch.set_num_threads(1)


@pytest.fixture
def tmpfs(tmp_path):
    """A function (name, size) -> a fresh tmpfs of that size under tmp_path, unmounted at the
    end of the test."""
    mounted = []

    def make(name: str, size: str):
        path = tmp_path / name
        mount_tmpfs(path, size)
        mounted.append(path)
        return path

    try:
        yield make
    finally:
        for path in mounted:
            umount(path)


def pytest_terminal_summary(terminalreporter):
    if COUNTS:
        terminalreporter.write_sep("-", "reliability counts")
        for name, n in sorted(COUNTS.items()):
            terminalreporter.write_line(f"{name}: {n}")
