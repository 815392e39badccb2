"""The lock file pins, with ==, every package pyproject.toml asks for, and the set-up installs from it.

The lock (requirements/lock-linux-x86_64-py311.txt) holds the exact versions the test suite
passed with on the tested platform. A dependency added to pyproject.toml but not to the lock
would be installed at whatever version is newest that day, which is what the lock is there to stop.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements" / "lock-linux-x86_64-py311.txt"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!_-]+)$")


def normalised(name: str) -> str:
    """A package name as pip compares them (PEP 503): case and runs of - _ . do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """``scikit-image>=0.23`` -> ``scikit-image`` (extras, versions and markers dropped)."""
    return re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip()).group(0)


def pyproject_dependencies() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    return {normalised(requirement_name(requirement)) for requirement in requirements}


def lock_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def locked_versions(text: str) -> dict[str, str]:
    """``{normalised name: version}``; a line that is not ``name==version`` is an error naming it."""
    versions = {}
    for line in lock_lines(text):
        match = PIN.match(line)
        assert match, f"{LOCK.name}: {line!r} does not pin an exact version with =="
        versions[normalised(match["name"])] = match["version"]
    return versions


def test_every_pyproject_dependency_is_pinned_in_the_lock():
    locked = locked_versions(LOCK.read_text())
    missing = sorted(pyproject_dependencies() - set(locked))
    assert not missing, f"pyproject.toml dependencies missing from {LOCK.name}: {missing}"


def test_the_lock_pins_only_exact_versions_and_not_the_kit_itself():
    locked = locked_versions(LOCK.read_text())
    assert "selmask" not in locked  # installed from the checkout, editable, after the lock
    assert len(locked) == len(lock_lines(LOCK.read_text()))  # no package pinned twice


def test_the_checks_catch_a_range_and_read_every_spelling_of_a_name():
    with pytest.raises(AssertionError, match="torch>=2"):
        locked_versions("numpy==2.4.6\ntorch>=2\n")
    assert locked_versions("Segmentation_Models.PyTorch==0.6.0") == {"segmentation-models-pytorch": "0.6.0"}
    assert requirement_name("scikit-image>=0.23  # a comment") == "scikit-image"


def test_make_and_the_readme_install_from_this_lock():
    relative = LOCK.relative_to(REPO).as_posix()
    assert f"LOCK := {relative}" in (REPO / "Makefile").read_text()
    assert relative in (REPO / "README.md").read_text()
