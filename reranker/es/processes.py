"""What the local node needs of the operating system: an unprivileged service user, free
ports, and telling an Elasticsearch process (ours or another) from anything else on a port."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reranker.credentials import (
    LocalCredentials,
)
from reranker.errors import NodeError
from reranker.es.distribution import output_tail

SERVICE_USER = "reranker-es"


# ------------------------------------------------------------------------- root handling


@dataclass(frozen=True)
class RunAs:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def ensure_service_user() -> RunAs:
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        entry = _create_service_user()
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)


def _create_service_user() -> pwd.struct_passwd:
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    if not os.path.exists(useradd):
        raise NodeError(
            f"Elasticsearch cannot run as root and useradd is missing to create the "
            f"unprivileged user {SERVICE_USER!r}; run as a normal user instead"
        )
    done = subprocess.run(
        [
            useradd,
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            SERVICE_USER,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode not in (0, 9):  # 9: created meanwhile by someone else
        raise NodeError(f"useradd {SERVICE_USER} failed: {output_tail(done.stderr, 5)}")
    return pwd.getpwnam(SERVICE_USER)


def _can(user: RunAs, path: Path, bits: int) -> bool:
    """Whether ``user`` has permission ``bits`` (an ``os.R_OK``-style mask) on ``path``."""
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_uid == user.uid:
        mode = (st.st_mode >> 6) & 7
    elif st.st_gid in user.groups:
        mode = (st.st_mode >> 3) & 7
    else:
        mode = st.st_mode & 7
    return mode & bits == bits


def reachable_by(user: RunAs, path: Path) -> bool:
    """Every ancestor of ``path`` is searchable by ``user`` (so it can open the path itself)."""
    path = path.resolve()
    return all(_can(user, parent, os.X_OK) for parent in reversed(path.parents))


def chown_tree(path: Path, user: RunAs) -> None:
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            st = os.lstat(name)
            if st.st_uid != user.uid or st.st_gid != user.gid:
                os.lchown(name, user.uid, user.gid)


def jdk_usable_by(user: RunAs, home: Path) -> bool:
    java = (home / "bin" / "java").resolve()
    return reachable_by(user, java) and _can(user, java, os.X_OK | os.R_OK)


# ----------------------------------------------------------------------------- processes


def _proc_args(pid: int) -> list[str] | None:
    """The command line of a live (not zombie) process, or None."""
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            raw = (proc / "cmdline").read_bytes()
        except (OSError, IndexError):
            return None
        if state in {"Z", "X"}:
            return None
        return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    try:  # no /proc (macOS): ask ps
        done = subprocess.run(
            ["ps", "-o", "stat=,command=", "-p", str(pid)],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    line = done.stdout.strip()
    if done.returncode != 0 or not line or line.startswith("Z"):
        return None
    return line.split()[1:]


def is_elasticsearch(pid: int, marker: str) -> bool:
    """Whether ``pid`` is an Elasticsearch server JVM whose command line mentions ``marker``.

    The server's command line carries ``-Djava.io.tmpdir=<node folder>/tmp``, so the node
    folder as ``marker`` tells our node from any other Elasticsearch (or a recycled pid).
    """
    args = _proc_args(pid)
    if not args:
        return False
    return (
        Path(args[0]).name == "java"
        and any("org.elasticsearch" in arg for arg in args)
        and any(marker in arg for arg in args)
    )


def pid_alive(pid: int) -> bool:
    return _proc_args(pid) is not None


def port_bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------- HTTP


class NoAnswer(Exception):
    """Nothing answered HTTP on the port (refused, reset, timed out)."""


def _basic_auth(creds: LocalCredentials | None) -> dict[str, str]:
    if creds is None:
        return {}
    token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


def _get_json(url: str, timeout: float, creds: LocalCredentials | None = None) -> tuple[int, Any]:
    """``(status, parsed JSON or None)``; :class:`NoAnswer` when nothing speaks HTTP there."""
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", **_basic_auth(creds)}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        status, body = int(exc.code), exc.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise NoAnswer(str(exc)) from exc
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


@dataclass(frozen=True)
class NodeAnswer:
    """What an Elasticsearch on the port says about itself."""

    http_status: int
    cluster_name: str | None
    version: str | None
    pid: int | None
    health: str | None


def ask_node(
    url: str, timeout: float = 3.0, creds: LocalCredentials | None = None
) -> NodeAnswer | None:
    """Ask the port who it is; None when nothing answers HTTP."""
    try:
        status, nodes = _get_json(
            f"{url}/_nodes/_local?filter_path=cluster_name,nodes.*.version,nodes.*.process.id",
            timeout,
            creds,
        )
    except NoAnswer:
        return None
    if status != 200 or not isinstance(nodes, dict):
        return NodeAnswer(status, None, None, None, None)
    node: dict[str, Any] = next(iter((nodes.get("nodes") or {}).values()), {})
    pid = (node.get("process") or {}).get("id")
    health: str | None = None
    with contextlib.suppress(NoAnswer):
        h_status, body = _get_json(f"{url}/_cluster/health", timeout, creds)
        if h_status in (200, 408) and isinstance(body, dict):
            health = body.get("status")
    return NodeAnswer(
        status,
        nodes.get("cluster_name"),
        node.get("version"),
        int(pid) if isinstance(pid, int) else None,
        health,
    )


def describe_other(port: int, answer: NodeAnswer | None) -> str:
    if answer is None:
        return f"port {port} on 127.0.0.1 is already in use by another process"
    if answer.http_status == 401:
        return (
            f"port {port} on 127.0.0.1 is served by a secured Elasticsearch that refuses the "
            f"credentials in {_credentials_hint(port)} (started by another RERANKER_HOME?)"
        )
    if answer.cluster_name is None:
        return (
            f"port {port} on 127.0.0.1 is already in use by another HTTP server "
            f"(HTTP {answer.http_status} to /_nodes/_local)"
        )
    pid = f", pid {answer.pid}" if answer.pid else ""
    return (
        f"port {port} is already served by Elasticsearch {answer.version or '?'} "
        f"(cluster {answer.cluster_name!r}{pid}) that this node folder did not start"
    )


def _credentials_hint(port: int) -> str:
    from reranker.credentials import credentials_file

    return str(credentials_file(port))
