"""MQTT: commands in, acknowledged in order once their effect is committed."""

from service.adapters.mqtt.ingress import MqttIngress
from service.adapters.mqtt.options import IngressOptions

__all__ = ["IngressOptions", "MqttIngress"]
