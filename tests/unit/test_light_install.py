"""The serving set works without the train extra: no torch, transformers or onnx at run time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: run first in the child: the train extra's packages become unimportable, as in a light venv
_BLOCK = (
    "import sys\n"
    "for name in ('torch', 'transformers', 'onnx', 'safetensors'):\n"
    "    sys.modules[name] = None\n"
)


def _run(code: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RERANKER_HOME": str(home), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", _BLOCK + code, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_embedder_scorer_and_proxy_load_and_run_without_torch(
    tmp_path: Path, minilm_weights_dir: Path
) -> None:
    code = (
        "import json\n"
        "from reranker.retrieval.embedder import Embedder\n"
        "from reranker.rerank.scorer import load_scorer\n"
        "import reranker.cli, reranker.proxy.app, reranker.proxy.rerank_api\n"
        "from reranker.rerank.features import features_for_texts\n"
        "embedder = Embedder.default()\n"
        "vectors = embedder.encode(['vitamin D', 'bone density'])\n"
        "scorer = load_scorer(variant='int8')\n"
        "texts = ['Vitamin D raises calcium uptake.', 'The train left at noon.']\n"
        "features = features_for_texts(embedder, 'vitamin D', texts).values\n"
        "logits = scorer.score([('vitamin D', t) for t in texts], features=features)\n"
        "print(json.dumps({'dim': int(vectors.shape[1]), 'logits': logits.tolist(),\n"
        "                  'torch': sys.modules.get('torch') is not None}))\n"
    )
    done = _run(code, tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["dim"] == 384
    assert result["logits"][0] > result["logits"][1]
    assert result["torch"] is False


def test_train_without_the_train_extra_says_what_to_install(tmp_path: Path) -> None:
    data = tmp_path / "triples.jsonl"
    data.write_text('{"query": "q", "positive": "p", "negative": "n"}\n', encoding="utf-8")
    code = "from reranker.cli import main\nmain(sys.argv[1:])\n"
    done = _run(code, tmp_path, "train", str(data), "--output", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr
    assert "needs the train extra" in done.stderr
    assert "./scripts/setup --train" in done.stderr
    assert "Traceback" not in done.stderr
