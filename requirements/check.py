"""Whether the lock files still match pyproject.toml: `make install` runs it before it installs.

Each lock must pin every requirement its source names (pyproject's dependencies, extras or
build requirements, or tools.in) to a version that satisfies the requirement's specifier,
with hashes; and the locks that are installed next to one another or stand for one another
(the image's service.lock, build.lock and tools.lock against dev.lock, which the tests run
with) must agree on every version they share. A lock that fails is stale: `make lock`.

Run with the venv's python (it needs `packaging`, which tools.lock installs first):
`python requirements/check.py` prints what is stale and exits 1, or prints nothing.
"""

from __future__ import annotations

import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

__all__ = ["Pin", "parse_lock", "problems", "sources"]

REQUIREMENTS = Path(__file__).resolve().parent
# The locks checked against dev.lock's versions: what is installed beside it or instead of it.
AGREE_WITH_DEV = ("service.lock", "build.lock", "tools.lock")


@dataclass(frozen=True, slots=True)
class Pin:
    """One `name==version ; marker` entry of a lock (a universal lock may pin a name twice,
    under exclusive markers)."""

    name: NormalizedName
    version: Version
    marker: str
    hashes: int


def parse_lock(text: str) -> list[Pin]:
    """The pins of a lock written by `uv pip compile --generate-hashes`."""
    pins: list[Pin] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("--hash="):
            if not pins:
                raise ValueError(f"a hash before any requirement: {line!r}")
            pins[-1] = Pin(pins[-1].name, pins[-1].version, pins[-1].marker, pins[-1].hashes + 1)
            continue
        requirement = Requirement(stripped.removesuffix("\\").strip())
        [spec] = requirement.specifier  # a lock pins each entry with exactly one ==
        if spec.operator != "==":
            raise ValueError(f"not pinned with ==: {line!r}")
        pins.append(
            Pin(
                canonicalize_name(requirement.name),
                Version(spec.version),
                str(requirement.marker or ""),
                0,
            )
        )
    return pins


def sources(pyproject: dict[str, Any], tools_in: str) -> dict[str, list[str]]:
    """What each lock is compiled from (as `make lock` does), as requirement strings."""
    project = pyproject["project"]
    runtime = list(project["dependencies"])
    build_requires = list(pyproject["build-system"]["requires"])
    tools = [
        line.split("#", 1)[0].strip() for line in tools_in.splitlines() if line.split("#", 1)[0]
    ]
    return {
        "service.lock": runtime,
        "dev.lock": runtime + list(project["optional-dependencies"]["dev"]) + build_requires,
        "build.lock": build_requires,
        "tools.lock": [t for t in tools if t],
    }


def problems(root: Path) -> list[str]:
    """Everything stale in `root`/requirements against `root`/pyproject.toml; [] if none."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    folder = root / "requirements"
    wanted = sources(pyproject, (folder / "tools.in").read_text())
    found: list[str] = []
    locks: dict[str, list[Pin]] = {}
    for lock_name, requirements in wanted.items():
        path = folder / lock_name
        if not path.exists():
            found.append(f"{lock_name} is missing")
            continue
        locks[lock_name] = pins = parse_lock(path.read_text())
        found.extend(
            f"{lock_name}: {pin.name}=={pin.version} has no --hash"
            for pin in pins
            if not pin.hashes
        )
        for text in requirements:
            requirement = Requirement(text)
            name = canonicalize_name(requirement.name)
            versions = [p.version for p in pins if p.name == name]
            if not versions:
                found.append(f"{lock_name}: {requirement} is not in the lock")
            found.extend(
                f"{lock_name}: {name}=={version} does not satisfy {requirement}"
                for version in versions
                if not requirement.specifier.contains(version, prereleases=True)
            )
    dev = {(p.name, p.marker): p.version for p in locks.get("dev.lock", [])}
    dev_names = {name for name, _ in dev}
    for lock_name in AGREE_WITH_DEV:
        for pin in locks.get(lock_name, []):
            if pin.name not in dev_names:
                continue  # a tool of its own (pip, uv): nothing in dev.lock to agree with
            if dev.get((pin.name, pin.marker)) != pin.version:
                found.append(
                    f"{lock_name}: {pin.name}=={pin.version} is not what dev.lock pins "
                    f"({', '.join(str(v) for (n, _), v in dev.items() if n == pin.name)})"
                )
    return found


def main() -> int:
    found = problems(REQUIREMENTS.parent)
    for problem in found:
        sys.stderr.write(f"stale lock: {problem}\n")
    if found:
        sys.stderr.write(
            "requirements/*.lock do not match pyproject.toml: run `make lock` and commit them\n"
        )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
