"""The print dispatcher; it lives in `service.application.dispatch`, one module per decision."""

from service.application.dispatch import PrintDispatcher

__all__ = ["PrintDispatcher"]
