"""The committed lock (what make test / make demo / CI install) agrees with pyproject's ranges."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _lock_path() -> Path:
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"^LOCK \?= (\S+)$", makefile, flags=re.M)
    assert match, "the Makefile names no LOCK file"
    return ROOT / match.group(1)


def _pins(text: str) -> Dict[str, Version]:
    pins: Dict[str, Version] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version and " " not in line, f"lock line {n} is not NAME==VERSION: {line!r}"
        key = canonicalize_name(name)
        assert key not in pins, f"lock pins {name} twice"
        pins[key] = Version(version)
    return pins


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _locked_requirements(project: dict, extras: List[str]) -> List[Requirement]:
    """The dependencies and those of `extras`; an extra naming grefel's own extras (`dev`
    holds `grefel[train]`) contributes theirs."""
    reqs = [Requirement(r) for r in project["dependencies"]]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for line in project["optional-dependencies"][extra]:
            req = Requirement(line)
            if canonicalize_name(req.name) == canonicalize_name(project["name"]):
                todo += sorted(req.extras)
            else:
                reqs.append(req)
    return reqs


def test_lock_pins_every_declared_dependency_inside_its_range() -> None:
    lock = _lock_path()
    assert lock.is_file(), f"{lock} is missing: run make lock"
    pins = _pins(lock.read_text())
    makefile = (ROOT / "Makefile").read_text()
    extras = re.search(r"^LOCK_EXTRAS \?= (\S+)$", makefile, flags=re.M).group(1).split(",")
    problems = []
    for req in _locked_requirements(_pyproject()["project"], extras):
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None:
            problems.append(f"{req.name}: declared in pyproject ({req}) but not in the lock")
        elif not req.specifier.contains(pinned, prereleases=True):
            problems.append(f"{req.name}=={pinned} (lock) is outside pyproject's {req.specifier}")
    assert not problems, "lock and pyproject disagree (make lock):\n" + "\n".join(problems)


def test_self_referencing_extras_are_expanded() -> None:
    project = {"name": "grefel", "dependencies": ["numpy"],
               "optional-dependencies": {"train": ["torch>=2.1"], "dev": ["grefel[train]",
                                                                      "pytest"]}}
    names = [r.name for r in _locked_requirements(project, ["dev"])]
    assert sorted(names) == ["numpy", "pytest", "torch"]


def test_lock_pins_the_makefile_torch() -> None:
    makefile = (ROOT / "Makefile").read_text()
    torch_pin = Requirement(re.search(r"^TORCH_PIN \?= (\S+)$", makefile, flags=re.M).group(1))
    pinned = _pins(_lock_path().read_text())["torch"]
    assert torch_pin.specifier.contains(pinned, prereleases=True), (pinned, torch_pin)


def test_pins_parser_rejects_ranges() -> None:
    with pytest.raises(AssertionError, match="not NAME==VERSION"):
        _pins("numpy>=1.24\n")


def _unmet_requirements(pins: Dict[str, Version]) -> List[str]:
    """What the locked packages themselves require (their installed metadata) and the lock lacks.

    A venv made by ``python -m venv`` starts with its own setuptools (65.5 on CPython 3.11.7);
    torch 2.13 requires setuptools>=77.0.3, so a lock without setuptools failed pip check on a
    fresh machine. The check reads the metadata of the locked releases installed in this venv.
    """
    from importlib import metadata

    env = {"extra": "", "python_version": "3.11", "python_full_version": "3.11.7",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
           "os_name": "posix", "implementation_name": "cpython",
           "platform_python_implementation": "CPython"}
    problems = []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if pins.get(name) != Version(dist.version):
            continue  # not the locked release: its metadata says nothing about the lock
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            pinned = pins.get(canonicalize_name(req.name))
            if pinned is None:
                problems.append(f"{name} requires {req} and the lock has no {req.name}")
            elif not req.specifier.contains(pinned, prereleases=True):
                problems.append(f"{name} requires {req}; the lock pins {req.name}=={pinned}")
    return problems


def test_lock_holds_what_its_own_packages_require() -> None:
    problems = _unmet_requirements(_pins(_lock_path().read_text()))
    assert not problems, "the lock is not closed (make lock):\n" + "\n".join(problems)


def test_closure_check_catches_a_missing_setuptools() -> None:
    pins = _pins(_lock_path().read_text())
    pins.pop("setuptools", None)
    assert any("setuptools" in p for p in _unmet_requirements(pins))
