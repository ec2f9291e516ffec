"""Credentials of the local secured node, kept where only their owner can read them.

``reranker es up`` starts the local node with Elasticsearch's security on and a generated
password for the built-in ``elastic`` superuser. The password is written, mode 0600 in a
folder of mode 0700, to ``RERANKER_HOME/credentials/elasticsearch-<port>.json``; the CLI, the
proxy and the tests read it from there when the environment names no credentials of its own
(``RERANKER_ES_API_KEY``, ``RERANKER_ES_USERNAME``/``RERANKER_ES_PASSWORD``) and the cluster
URL is that loopback port. Nothing else is stored; a node started with ``--no-security`` has
no file.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from reranker.home import reranker_home

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
USERNAME = "elastic"


@dataclass(frozen=True)
class LocalCredentials:
    """A username and password for the local node (``repr`` hides the password)."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"LocalCredentials(username={self.username!r}, password=***)"


def credentials_dir(home: Path | None = None) -> Path:
    return (home or reranker_home()) / "credentials"


def credentials_file(port: int, home: Path | None = None) -> Path:
    """Where the credentials of the local node on ``port`` are kept."""
    return credentials_dir(home) / f"elasticsearch-{port}.json"


def generate_password() -> str:
    """32 URL-safe random characters (192 bits)."""
    return secrets.token_urlsafe(24)


def read_credentials(port: int, home: Path | None = None) -> LocalCredentials | None:
    """The stored credentials for ``port``, or ``None`` when there are none (or unreadable)."""
    path = credentials_file(port, home)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    username, password = data.get("username"), data.get("password")
    if isinstance(username, str) and isinstance(password, str) and username and password:
        return LocalCredentials(username, password)
    return None


def credentials_for_url(url: str, home: Path | None = None) -> LocalCredentials | None:
    """The local node's credentials when ``url`` is a loopback URL with a stored file (of
    several, comma-separated, the first: a local cluster's nodes share their credentials)."""
    try:
        parsed = urlparse(url.split(",", 1)[0].strip())
        port = parsed.port or (443 if parsed.scheme == "https" else 9200)
    except ValueError:
        return None
    if parsed.hostname not in LOOPBACK_HOSTS:
        return None
    return read_credentials(port, home)


def write_credentials(port: int, creds: LocalCredentials, home: Path | None = None) -> Path:
    """Write atomically with mode 0600 (the folder 0700); returns the file."""
    folder = credentials_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    target = credentials_file(port, home)
    handle, staging = tempfile.mkstemp(prefix=".credentials-", dir=folder)
    try:
        os.fchmod(handle, 0o600)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(
                {
                    "url": f"http://127.0.0.1:{port}",
                    "username": creds.username,
                    "password": creds.password,
                },
                out,
            )
            out.write("\n")
        os.replace(staging, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staging)
        raise
    return target


def remove_credentials(port: int, home: Path | None = None) -> None:
    credentials_file(port, home).unlink(missing_ok=True)
