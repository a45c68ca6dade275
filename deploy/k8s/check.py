"""Render the kustomize trees under deploy/k8s offline and check what they produce.

    python deploy/k8s/check.py                           # the base and every overlay
    python deploy/k8s/check.py overlays/dev              # one (relative to deploy/k8s)
    python deploy/k8s/check.py --print overlays/production   # and print the rendered YAML

Rendering. No usable kustomize can be installed from the registries this project uses:
Debian's kubernetes-client is kubectl 1.20, whose kustomize v2 predates `labels:` and
`patches:`; on PyPI there are wrappers that download the binary at run time (not possible
here), on npm a third party's repackaging of kustomize 4.5.4 that we would have to trust
blindly. So this file carries a small renderer for exactly the kustomize features deploy/k8s
uses, and nothing more:
  - `resources:` (YAML files and directories with a kustomization.yaml),
  - `namespace:`, `labels:` (includeSelectors false; includeTemplates for Deployments),
    `replicas:`, `images:` (newName, newTag, digest),
  - `patches:` with `path:` or inline `patch:`, strategic merge only: maps merge, `null`
    removes a key, lists merge by key for containers, initContainers, env, volumes and
    volumeMounts, and `$patch: delete` at the top removes the whole object.
Anything else (another kustomization field, a patch target selector, a JSON 6902 patch, a
list without a known merge key, any other `$patch` directive) is an error, never silently
ignored. When a real kustomize is on the machine (KUSTOMIZE=/path/to/kustomize, `kustomize`
or `kubectl` on PATH), its output is compared with ours object by object, and any difference
fails the check: the renderer is kept honest wherever a real one exists (this project's
machines have a kubectl 1.32 with kustomize v5.5.0 in their image, though no registry
we use can install it).

Validation. Built-in kinds against the Kubernetes OpenAPI schemas that the kubernetes-validate
package bundles, in strict mode (an unknown field fails), for every version in
KUBERNETES_VERSIONS; the CRDs we use (ServiceMonitor, ScaledObject) against the minimal
schemas in deploy/k8s/schemas/. Then what no schema sees: selectors that match the pods,
probes on the right paths and ports, the restricted security context, MQTT_CLIENT_ID from the
pod name, a termination grace that covers the drain, one autoscaler per Deployment; and the
secrets rules: no Secret and no credential in any tree (credentials come from Secrets the
operator creates, through secretKeyRef), every $(NAME) defined before its use, TLS to both
brokers and PostgreSQL (mqtts, amqps, sslmode=verify-full, the CA files mounted), the API
keys file mounted from a Secret, AUTH_DISABLED and API_KEYS never set, no plain broker port
open in the NetworkPolicy.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import yaml

__all__ = [
    "KUBERNETES_VERSIONS",
    "RenderError",
    "check_policies",
    "find_kustomize",
    "render",
    "render_with_kustomize",
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

_KUSTOMIZATION_FIELDS: Final = frozenset(
    {"apiVersion", "kind", "resources", "namespace", "labels", "images", "replicas", "patches"}
)
_CLUSTER_SCOPED: Final = frozenset({"Namespace"})
# Lists a strategic merge patch merges by key (from the Kubernetes API's patchMergeKey).
_MERGE_KEYS: Final = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
}
_SCALABLE_KINDS: Final = frozenset({"Deployment", "StatefulSet", "ReplicaSet"})
_GRACE_MARGIN_S: Final = 5
_KUSTOMIZE_MAJOR: Final = 5  # the version the renderer was compared with
_VERSION_FLAGS: Final = re.MULTILINE | re.IGNORECASE | re.DOTALL


class RenderError(Exception):
    """The kustomization uses something this renderer does not do, or is wrong."""


# --- rendering ----------------------------------------------------------------------------


def render(directory: Path) -> list[Doc]:
    """The objects `kustomize build directory` produces (for the supported features)."""
    kfile = directory / "kustomization.yaml"
    kustomization = _load_kustomization(kfile)
    docs: list[Doc] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            docs.extend(render(path))
        elif path.is_file():
            docs.extend(_load_all(path))
        else:
            raise RenderError(f"{kfile}: resource {entry!r} not found")
    _check_unique(docs, kfile)

    # The order of kustomize's built-in transformers: patches, namespace, labels,
    # replicas, images.
    for spec in kustomization.get("patches", []):
        _apply_patch(docs, _patch_document(spec, directory, kfile), kfile)
    if namespace := kustomization.get("namespace"):
        for doc in docs:
            if doc["kind"] not in _CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = namespace
    for spec in kustomization.get("labels", []):
        _apply_labels(docs, spec, kfile)
    for spec in kustomization.get("replicas", []):
        _apply_replicas(docs, spec, kfile)
    for spec in kustomization.get("images", []):
        _apply_image(docs, spec, kfile)
    return docs


def _load_kustomization(kfile: Path) -> Doc:
    if not kfile.is_file():
        raise RenderError(f"{kfile.parent}: no kustomization.yaml")
    kustomization = _load_one(kfile)
    unknown = set(kustomization) - _KUSTOMIZATION_FIELDS
    if unknown:
        raise RenderError(f"{kfile}: fields not supported by this renderer: {sorted(unknown)}")
    if (kustomization.get("apiVersion"), kustomization.get("kind")) != (
        "kustomize.config.k8s.io/v1beta1",
        "Kustomization",
    ):
        raise RenderError(f"{kfile}: not a kustomize.config.k8s.io/v1beta1 Kustomization")
    return kustomization


def _load_one(path: Path) -> Doc:
    docs = _load_all(path)
    if len(docs) != 1:
        raise RenderError(f"{path}: expected one YAML document, found {len(docs)}")
    return docs[0]


def _load_all(path: Path) -> list[Doc]:
    with path.open(encoding="utf-8") as stream:
        docs = [doc for doc in yaml.safe_load_all(stream) if doc is not None]
    for doc in docs:
        if not isinstance(doc, dict):
            raise RenderError(f"{path}: a document is not a mapping")
    return docs


def identity(doc: Mapping[str, Any]) -> tuple[str, str, str]:
    """(kind, namespace, name): what names an object in a rendered tree."""
    metadata = doc.get("metadata") or {}
    return (str(doc.get("kind")), str(metadata.get("namespace", "")), str(metadata.get("name")))


def _check_unique(docs: Iterable[Doc], where: Path) -> None:
    seen: set[tuple[str, str, str]] = set()
    for doc in docs:
        if "kind" not in doc or "name" not in (doc.get("metadata") or {}):
            raise RenderError(f"{where}: an object without kind or metadata.name")
        key = identity(doc)
        if key in seen:
            raise RenderError(f"{where}: {key} appears twice")
        seen.add(key)


def _patch_document(spec: Mapping[str, Any], directory: Path, kfile: Path) -> Doc:
    if set(spec) == {"path"}:
        return _load_one(directory / spec["path"])
    if set(spec) == {"patch"}:
        patch = yaml.safe_load(spec["patch"])
        if not isinstance(patch, dict):
            raise RenderError(f"{kfile}: an inline patch is not a mapping")
        return patch
    raise RenderError(f"{kfile}: only `path:` or `patch:` patches are supported, not {spec}")


def _apply_patch(docs: list[Doc], patch: Doc, kfile: Path) -> None:
    metadata = patch.get("metadata") or {}
    matches = [
        i
        for i, doc in enumerate(docs)
        if doc.get("apiVersion") == patch.get("apiVersion")
        and doc.get("kind") == patch.get("kind")
        and doc["metadata"].get("name") == metadata.get("name")
        and (
            "namespace" not in metadata or doc["metadata"].get("namespace") == metadata["namespace"]
        )
    ]
    if len(matches) != 1:
        raise RenderError(f"{kfile}: patch for {identity(patch)} matches {len(matches)} objects")
    directive = patch.get("$patch")
    if directive == "delete":
        del docs[matches[0]]
        return
    if directive is not None:
        raise RenderError(f"{kfile}: `$patch: {directive}` is not supported")
    _merge(docs[matches[0]], patch, f"{kfile.name}:")


def _merge(target: Doc, patch: Mapping[str, Any], where: str) -> None:
    for key, value in patch.items():
        here = f"{where}.{key}"
        if key.startswith("$"):
            raise RenderError(f"{here}: patch directives are not supported")
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            if not isinstance(target.get(key), dict):
                target[key] = {}
            _merge(target[key], value, here)
        elif isinstance(value, list):
            if key not in _MERGE_KEYS:
                raise RenderError(f"{here}: list without a known merge key")
            target[key] = _merge_list(target.get(key) or [], value, _MERGE_KEYS[key], here)
        else:
            target[key] = copy.deepcopy(value)


def _merge_list(target: list[Any], patch: list[Any], merge_key: str, where: str) -> list[Any]:
    """Merge by key; as in Kubernetes' strategic merge, the patch's items come first (in
    the patch's order), then the items only the target has (in its order)."""
    by_key = {item.get(merge_key): item for item in target if isinstance(item, dict)}
    merged: list[Any] = []
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise RenderError(f"{where}: every item needs its merge key {merge_key!r}")
        entry: Doc = by_key.get(item[merge_key], {})
        _merge(entry, item, f"{where}[{item[merge_key]}]")
        merged.append(entry)
    patched = {item[merge_key] for item in patch}
    merged += [
        item for item in target if not isinstance(item, dict) or item.get(merge_key) not in patched
    ]
    return merged


def _apply_labels(docs: list[Doc], spec: Mapping[str, Any], kfile: Path) -> None:
    unknown = set(spec) - {"pairs", "includeSelectors", "includeTemplates"}
    if unknown or spec.get("includeSelectors", False):
        raise RenderError(f"{kfile}: labels: only pairs, includeTemplates, includeSelectors false")
    pairs = {str(k): str(v) for k, v in spec["pairs"].items()}
    for doc in docs:
        doc["metadata"].setdefault("labels", {}).update(pairs)
        spec_field = doc.get("spec") or {}
        if not spec.get("includeTemplates") or not (
            "template" in spec_field or "jobTemplate" in spec_field
        ):
            continue
        if doc["kind"] != "Deployment":
            raise RenderError(f"{kfile}: template labels are supported for Deployments only")
        template_meta = spec_field["template"].setdefault("metadata", {})
        template_meta.setdefault("labels", {}).update(pairs)


def _apply_replicas(docs: list[Doc], spec: Mapping[str, Any], kfile: Path) -> None:
    found = [
        d for d in docs if d["kind"] in _SCALABLE_KINDS and d["metadata"]["name"] == spec["name"]
    ]
    if not found:
        raise RenderError(f"{kfile}: replicas: nothing named {spec['name']!r} to scale")
    for doc in found:
        doc["spec"]["replicas"] = int(spec["count"])


def _apply_image(docs: list[Doc], spec: Mapping[str, Any], kfile: Path) -> None:
    unknown = set(spec) - {"name", "newName", "newTag", "digest"}
    if unknown:
        raise RenderError(f"{kfile}: images: fields not supported: {sorted(unknown)}")
    for container in _containers(docs):
        name, suffix = _split_image(str(container["image"]))
        if name != spec["name"]:
            continue
        if "digest" in spec:
            suffix = f"@{spec['digest']}"
        elif "newTag" in spec:
            suffix = f":{spec['newTag']}"
        container["image"] = f"{spec.get('newName', name)}{suffix}"


def _split_image(image: str) -> tuple[str, str]:
    """("registry:5000/repo", ":tag" or "@sha256:..." or "")."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, f"@{digest}"
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def _containers(docs: Iterable[Doc]) -> Iterator[Doc]:
    for doc in docs:
        pod = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
        yield from pod.get("initContainers", [])
        yield from pod.get("containers", [])


def find_kustomize() -> list[str] | None:
    """The command line of a real kustomize (v5 or later) on this machine, if there is one.

    KUSTOMIZE=/path/to/kustomize is taken as it is; otherwise `kustomize` or `kubectl` on
    PATH, when it reports a kustomize v5 or later (kubectl 1.20, Debian's, carries v2).
    """
    if explicit := os.environ.get("KUSTOMIZE"):
        return [explicit, "build"]
    candidates = []
    if binary := shutil.which("kustomize"):
        candidates.append(([binary, "build"], [binary, "version"]))
    if kubectl := shutil.which("kubectl"):
        candidates.append(([kubectl, "kustomize"], [kubectl, "version", "--client", "-o", "json"]))
    for command, version_command in candidates:
        try:
            version = subprocess.run(  # noqa: S603 - a binary found on PATH, fixed arguments
                version_command, capture_output=True, text=True, timeout=60, check=False
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        match = re.search(r"kustomize.*?\bv(\d+)\.|^v(\d+)\.", version, _VERSION_FLAGS)
        if match and int(match.group(1) or match.group(2)) >= _KUSTOMIZE_MAJOR:
            return command
    return None


def render_with_kustomize(command: list[str], directory: Path) -> list[Doc]:
    result = subprocess.run(  # noqa: S603 - a fixed command line: find_kustomize()
        [*command, str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise RenderError(f"{' '.join(command)} {directory}: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def compare(ours: Iterable[Doc], theirs: Iterable[Doc]) -> list[str]:
    """Differences between two renderings, object by object (their order aside)."""
    mine = {identity(d): d for d in ours}
    other = {identity(d): d for d in theirs}
    problems = [f"only kustomize renders {key}" for key in sorted(other.keys() - mine.keys())]
    problems += [f"only check.py renders {key}" for key in sorted(mine.keys() - other.keys())]
    for key in sorted(mine.keys() & other.keys()):
        if mine[key] != other[key]:
            problems.append(
                f"{key} differs:\n  check.py:  {json.dumps(mine[key], sort_keys=True)}"
                f"\n  kustomize: {json.dumps(other[key], sort_keys=True)}"
            )
    return problems


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
                problems.append(f"{key}: Kubernetes {version}: {error.message}")
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
    """Render, compare, validate and check one kustomize directory under deploy/k8s."""
    directory = ROOT / target
    try:
        docs = render(directory)
    except RenderError as exc:
        return [f"render: {exc}"]
    if show:
        sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
    problems: list[str] = []
    real = find_kustomize()
    if real is None:
        _say(f"{target}: {len(docs)} objects; no kustomize on this machine to compare with")
    else:
        try:
            problems += compare(docs, render_with_kustomize(real, directory))
        except (RenderError, OSError, subprocess.TimeoutExpired) as exc:
            problems.append(f"kustomize: {exc}")
        _say(f"{target}: {len(docs)} objects; compared with `{' '.join(real)}`")
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
