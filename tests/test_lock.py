"""requirements/*.lock against pyproject.toml: a stale lock fails here (and stops `make install`).

Every requirement of pyproject.toml (runtime for service.lock; runtime, the dev extra and the
build backend for dev.lock; the backend for build.lock) is pinned in its lock to a version
its specifier allows, with hashes; the image's locks agree with dev.lock, which the tests run
with; and this environment holds what dev.lock pins. requirements/check.py does the checking;
these tests also show that it notices a stale lock.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements"


def _load_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock_check", REQUIREMENTS / "check.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


check = _load_check()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_lock_matches_pyproject():
    problems = check.problems(ROOT)
    assert problems == [], "stale locks, run `make lock`:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("lock", "requirements"),
    [
        ("service.lock", PYPROJECT["project"]["dependencies"]),
        (
            "dev.lock",
            PYPROJECT["project"]["dependencies"]
            + PYPROJECT["project"]["optional-dependencies"]["dev"]
            + PYPROJECT["build-system"]["requires"],
        ),
        ("build.lock", PYPROJECT["build-system"]["requires"]),
    ],
)
def test_each_pyproject_requirement_is_pinned_within_its_specifier(lock, requirements):
    pins = check.parse_lock((REQUIREMENTS / lock).read_text())
    pinned = {p.name: p.version for p in pins}
    assert all(p.hashes > 0 for p in pins), f"{lock} has pins without hashes"
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement} is not in {lock}: run `make lock`"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{lock} pins {name}=={pinned[name]}, outside {requirement}: run `make lock`"
        )


def test_the_image_runs_the_versions_the_tests_run():
    dev = {p.name: p.version for p in check.parse_lock((REQUIREMENTS / "dev.lock").read_text())}
    for lock in ("service.lock", "build.lock"):
        for pin in check.parse_lock((REQUIREMENTS / lock).read_text()):
            assert dev.get(pin.name) == pin.version, (
                f"{lock} pins {pin.name}=={pin.version}, dev.lock {dev.get(pin.name)}"
            )


def test_this_environment_holds_what_dev_lock_pins():
    """`make install` installs dev.lock: a version other than the locked one here means the
    tests ran against something else than CI and the image."""
    different = []
    for pin in check.parse_lock((REQUIREMENTS / "dev.lock").read_text()):
        if pin.marker and not Marker(pin.marker).evaluate():
            continue
        try:
            installed = importlib.metadata.version(pin.name)
        except importlib.metadata.PackageNotFoundError:
            installed = "nothing"
        if installed != str(pin.version):
            different.append(f"{pin.name}: {installed} installed, {pin.version} locked")
    assert different == [], "run `make install`:\n" + "\n".join(different)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """pyproject.toml and requirements/ in a directory of their own, to make stale."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(REQUIREMENTS, tmp_path / "requirements", ignore=shutil.ignore_patterns("*.py*"))
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_a_new_dependency_makes_both_locks_stale(copy):
    _edit(
        copy / "pyproject.toml", '"httpx>=0.27",', '"httpx>=0.27", "a-package-nobody-locked>=1.0",'
    )
    assert check.problems(copy) == [
        "service.lock: a-package-nobody-locked>=1.0 is not in the lock",
        "dev.lock: a-package-nobody-locked>=1.0 is not in the lock",
    ]


def test_a_specifier_the_pin_no_longer_meets_is_stale(copy):
    _edit(copy / "pyproject.toml", '"httpx>=0.27"', '"httpx>=99"')
    problems = check.problems(copy)
    assert len(problems) == 2
    assert all("httpx==" in p and "does not satisfy httpx>=99" in p for p in problems), problems


def test_a_pin_without_hashes_or_apart_from_dev_lock_is_stale(copy):
    service = copy / "requirements" / "service.lock"
    lines = service.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("structlog=="))
    version = lines[start].split("==")[1].split()[0]
    # structlog without its hash lines, at a version dev.lock does not pin.
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("    --hash"))
    lines[start:end] = ["structlog==0.0.1"]
    service.write_text("\n".join(lines) + "\n")
    problems = check.problems(copy)
    assert "service.lock: structlog==0.0.1 has no --hash" in problems
    assert f"service.lock: structlog==0.0.1 is not what dev.lock pins ({version})" in problems, (
        problems
    )
