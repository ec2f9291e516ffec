"""The package as a user installs it: ``pip install`` of the wheel (not editable) into a fresh
venv, then ``reranker eval`` and ``reranker serve`` run from another directory, with the model
folders given as paths, against the real node.

The venv borrows the locked dependencies (a ``.pth`` line naming this venv's site-packages,
whose own ``.pth`` files, the editable install among them, are not run): only the package
itself comes from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.conftest import delete_indices_named_after, write_mini_scifact

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "reranker-minilm-l6-aware"
EMBEDDER = REPO / "models" / "all-MiniLM-L6-v2-scifact-se"
RESCORE_EMBEDDER = REPO / "models" / "bge-small-en-v1.5-int8"
#: the wheel ships no models: a user names each folder
MODELS = ["--embedder", EMBEDDER, "--rescore-embedder", RESCORE_EMBEDDER]


def run(command: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=600, **kwargs
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``reranker`` command of a fresh venv holding the wheel built from this checkout."""
    work = tmp_path_factory.mktemp("installed")
    source = work / "source"  # a copy: the build writes nothing into the checkout
    listed = run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO).stdout.split()
    for name in listed:
        if (REPO / name).is_file() and not name.startswith(("models/", "tests/", "docs/")):
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    python = sys.executable
    pip = [python, "-m", "pip", "--disable-pip-version-check"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", work, source])
    (wheel,) = work.glob("reranker-*.whl")
    venv = work / "venv"
    run([python, "-m", "venv", "--without-pip", venv])
    (site,) = venv.glob("lib/python*/site-packages")
    (site / "locked-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([*pip, "--python", venv / "bin" / "python", "install", "--no-deps", "--no-index", wheel])
    return venv / "bin" / "reranker"


def test_the_installed_package_is_the_wheel_not_the_checkout(
    installed: Path, tmp_path: Path
) -> None:
    python = installed.parent / "python"
    code = "import reranker, es_mappings; print(reranker.__file__); print(es_mappings.__file__)"
    where = run([python, "-c", code], cwd=tmp_path).stdout.split()
    assert all(str(installed.parents[1]) in w and str(REPO) not in w for w in where), where


def test_installed_eval_runs_from_another_directory_with_paths_given(
    installed: Path, es_node: Any, es_client: Any, tmp_path: Path
) -> None:
    dataset = write_mini_scifact(tmp_path / "mini-scifact", "test", 8, 60)
    output = tmp_path / "eval.json"
    alias = "test-installed-eval"
    command = [installed, "--es-url", es_node.url, *MODELS, "eval", dataset]
    command += ["--alias", alias, "--modes", "bm25,hybrid,rerank", "--model", MODEL]
    command += ["--output", output, "--no-progress"]
    try:
        run(command, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    finally:
        delete_indices_named_after(es_client, alias)
    report = json.loads(output.read_text(encoding="utf-8"))
    assert set(report["results"]) == {"bm25", "hybrid", "rerank"}
    assert report["results"]["rerank"]["ndcg@10"] > 0.5


def test_installed_serve_answers_from_another_directory_with_paths_given(
    installed: Path, es_node: Any, tmp_path: Path
) -> None:
    port = free_port()
    command = [installed, "--es-url", es_node.url, *MODELS, "serve"]
    command += ["--port", str(port), "--model", MODEL]
    process = subprocess.Popen(
        [str(c) for c in command],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": ""},
    )
    try:
        health: dict[str, Any] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/_health", timeout=2)
                health = answer.json()
                if answer.status_code == 200 and health.get("model", {}).get("loaded"):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        assert health.get("model", {}).get("loaded"), health
    finally:
        process.terminate()
        process.wait(timeout=30)
