"""MQTT: commands in, acknowledged in order once their effect is committed."""

from service.adapters.mqtt.ingress import MqttIngress

__all__ = ["MqttIngress"]
