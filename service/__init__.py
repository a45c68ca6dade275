"""Print job service: MQTT commands in, print jobs driven to their end, AMQP events out."""

__all__ = ["__version__"]

__version__ = "0.1.0"
