"""Where the package keeps what it writes: ``RERANKER_HOME`` (models, Elasticsearch
distributions, local node data and credentials, caches)."""

from __future__ import annotations

import os
from pathlib import Path


def reranker_home() -> Path:
    """Root of every cache the package writes (models, ES distributions, node data)."""
    configured = os.environ.get("RERANKER_HOME")
    home = Path(configured).expanduser() if configured else Path.home() / ".cache" / "reranker"
    return home
