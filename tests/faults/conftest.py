"""Fixtures of the fault tests; they also use the integration tests' service fixture."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration.conftest import start_service

__all__ = ["Report", "report", "start_service"]

Report = Callable[..., None]


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Report:
    """Prints a test's figures to the terminal, also when the test passes."""

    def emit(name: str, **figures: object) -> None:
        with capsys.disabled():
            print(f"\n[{name}] " + " ".join(f"{k}={v}" for k, v in figures.items()))

    return emit
