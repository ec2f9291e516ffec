"""Users and roles of the local node's file realm (``config/users``, ``users_roles``,
``roles.yml``), written by reranker.

Why files: the integ-test-zip distribution the local node runs has no ``analysis-common``
module, and the ``.security`` system index needs its ``pattern_capture`` filter, so that
index cannot be created there: no API keys, no native users, no role API. The file realm
and file roles need no index; Elasticsearch re-reads these files on its own (every
``resource.reload.interval.high``, set to 1 s on the local node). A full distribution does not
need this: the proxy creates a restricted API key there (see ``reranker.proxy.scoped``).

The files are rendered whole from ``config/reranker-file-realm.json`` (the state: each user's
password hash and roles, each role's index privileges); passwords are stored only as
PBKDF2-HMAC-SHA512 hashes in Elasticsearch's ``{PBKDF2}cost$salt$hash`` format.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Any

PBKDF2_COST = 10_000
STATE_FILE = "reranker-file-realm.json"
NAME = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9_.@-]{0,506}$")


def pbkdf2_hash(password: str, *, cost: int = PBKDF2_COST, salt: bytes | None = None) -> str:
    """``{PBKDF2}<cost>$<base64 salt>$<base64 key>``: what the file realm reads."""
    salt = salt if salt is not None else secrets.token_bytes(32)
    key = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, cost, dklen=32)
    return (
        f"{{PBKDF2}}{cost}${base64.b64encode(salt).decode('ascii')}$"
        f"{base64.b64encode(key).decode('ascii')}"
    )


def verify_pbkdf2(password: str, stored: str) -> bool:
    match = re.fullmatch(r"\{PBKDF2\}(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)", stored)
    if not match:
        return False
    salt = base64.b64decode(match.group(2))
    expected = pbkdf2_hash(password, cost=int(match.group(1)), salt=salt)
    return hmac.compare_digest(expected, stored)


class FileRealm:
    """The reranker-managed users and roles of one node's config folder."""

    def __init__(self, config_dir: Path, owner: tuple[int, int] | None = None) -> None:
        self.config_dir = config_dir
        self.owner = owner

    def _load(self) -> dict[str, Any]:
        try:
            state = json.loads((self.config_dir / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = {}
        if not isinstance(state, dict):
            state = {}
        state.setdefault("users", {})
        state.setdefault("roles", {})
        return state

    def has_user(self, username: str, password: str, role: str, role_body: dict[str, Any]) -> bool:
        """Whether ``username`` exists with this password and exactly this one role."""
        state = self._load()
        user = state["users"].get(username)
        return (
            isinstance(user, dict)
            and user.get("roles") == [role]
            and state["roles"].get(role) == role_body
            and verify_pbkdf2(password, str(user.get("hash", "")))
        )

    def grant(self, username: str, password: str, role: str, role_body: dict[str, Any]) -> bool:
        """Create or update ``username`` with ``password`` and the single role ``role`` whose
        descriptor is ``role_body`` (e.g. ``{"indices": [{"names": [...], "privileges":
        ["read"]}]}``). Returns whether the files changed (Elasticsearch reloads them)."""
        for name in (username, role):
            if not NAME.match(name):
                raise ValueError(f"{name!r} is not a valid user or role name")
        if self.has_user(username, password, role, role_body):
            return False
        state = self._load()
        state["roles"][role] = role_body
        state["users"][username] = {"hash": pbkdf2_hash(password), "roles": [role]}
        self._write(STATE_FILE, json.dumps(state, indent=1, sort_keys=True) + "\n", 0o600)
        self._render(state)
        return True

    def _render(self, state: dict[str, Any]) -> None:
        header = "# Written by reranker (reranker/es/file_realm.py); edits are lost.\n"
        users = "".join(f"{name}:{user['hash']}\n" for name, user in sorted(state["users"].items()))
        members: dict[str, list[str]] = {}
        for name, user in sorted(state["users"].items()):
            for role in user["roles"]:
                members.setdefault(role, []).append(name)
        users_roles = "".join(f"{role}:{','.join(names)}\n" for role, names in members.items())
        roles = header + "".join(
            f"{json.dumps(role)}: {json.dumps(body)}\n"
            for role, body in sorted(state["roles"].items())
        )
        # write the roles before the users who hold them
        self._write("roles.yml", roles, 0o640)
        self._write("users_roles", users_roles, 0o640)
        self._write("users", users, 0o640)

    def _write(self, name: str, text: str, mode: int) -> None:
        handle, staging = tempfile.mkstemp(prefix=f".{name}-", dir=self.config_dir)
        try:
            os.fchmod(handle, mode)
            if self.owner is not None:
                os.fchown(handle, *self.owner)
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
            os.replace(staging, self.config_dir / name)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
