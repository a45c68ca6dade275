"""The fault tests use the integration tests' fixtures."""

from tests.integration.conftest import start_service

__all__ = ["start_service"]
