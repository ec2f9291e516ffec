"""Transport TLS of the local cluster: a CA and one certificate per node.

Made once, with the distribution's own ``elasticsearch-certutil`` (PEM output, so no keystore
passwords), and kept beside the generated credentials, in
``RERANKER_HOME/credentials/elasticsearch-<first port>-tls/`` (folder 0700, keys 0600):
``ca.crt``, ``ca.key``, and ``<node name>.crt``/``.key`` for each node, valid for 127.0.0.1
and ``localhost``. Later starts reuse them; a node added later gets its certificate from the
same CA. The cluster copies each node's pair and the CA certificate into that node's config
folder, the only place Elasticsearch reads key material from.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from reranker.credentials import credentials_dir
from reranker.errors import NodeError
from reranker.es.distribution import Progress, output_tail

VALID_DAYS = 3650
CA_NAME = "ca"


def tls_dir(port: int, home: Path | None = None) -> Path:
    """Where the TLS material of the cluster whose first HTTP port is ``port`` is kept."""
    return credentials_dir(home) / f"elasticsearch-{port}-tls"


def missing_certificates(folder: Path, names: Sequence[str]) -> list[str]:
    """The node names whose certificate or key is not in ``folder`` yet."""
    return [
        name
        for name in names
        if not ((folder / f"{name}.crt").is_file() and (folder / f"{name}.key").is_file())
    ]


def instances_yaml(names: Sequence[str]) -> str:
    """certutil's ``--in`` file: each node valid for 127.0.0.1 and ``localhost``."""
    lines = ["instances:\n"]
    for name in names:
        lines.append(f'  - name: "{name}"\n    ip: ["127.0.0.1"]\n    dns: ["localhost"]\n')
    return "".join(lines)


def ensure_certificates(
    folder: Path,
    names: Sequence[str],
    es_home: Path,
    java_home: Path,
    progress: Progress | None = None,
) -> Path:
    """``folder`` holding the CA and a certificate for each of ``names``; only what is
    missing is made (certutil starts a JVM: seconds each). Returns ``folder``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.parent.chmod(0o700)
    folder.mkdir(exist_ok=True)
    folder.chmod(0o700)
    has_ca = (folder / "ca.crt").is_file() and (folder / "ca.key").is_file()
    missing = list(names) if not has_ca else missing_certificates(folder, names)
    if not missing and has_ca:
        return folder
    staging = Path(tempfile.mkdtemp(prefix=".certutil-", dir=folder))
    try:
        if not has_ca:
            if progress:
                progress(f"making the cluster's transport CA in {folder}")
            _certutil(es_home, java_home, staging, ["ca", "--out", str(staging / "ca.zip")])
            _unpack(staging / "ca.zip", folder, [CA_NAME])
        if progress:
            progress(f"making transport certificates for {', '.join(missing)}")
        (staging / "instances.yml").write_text(instances_yaml(missing), encoding="utf-8")
        command = ["cert", "--ca-cert", str(folder / "ca.crt"), "--ca-key", str(folder / "ca.key")]
        command += ["--in", str(staging / "instances.yml"), "--out", str(staging / "nodes.zip")]
        _certutil(es_home, java_home, staging, command)
        _unpack(staging / "nodes.zip", folder, missing)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _certutil(es_home: Path, java_home: Path, workdir: Path, args: list[str]) -> None:
    tool = es_home / "bin" / "elasticsearch-certutil"
    # paths are absolute: the tool resolves relative ones against the distribution's folder
    command = [str(tool), *args[:1], "--pem", "--days", str(VALID_DAYS), "--silent", *args[1:]]
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(workdir),
        "ES_JAVA_HOME": str(java_home),
    }
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NodeError(f"cannot run {tool}: {exc}") from exc
    if done.returncode != 0:
        raise NodeError(
            f"elasticsearch-certutil {args[0]} failed (exit {done.returncode}): "
            f"{output_tail(done.stdout + done.stderr, 10)}"
        )


def _unpack(archive: Path, folder: Path, names: Sequence[str]) -> None:
    """``<name>/<name>.crt`` and ``.key`` of certutil's zip into ``folder`` (keys 0600),
    each file written aside and renamed into place."""
    with zipfile.ZipFile(archive) as zf:
        for name in names:
            for suffix, mode in ((".key", 0o600), (".crt", 0o644)):
                member = f"{name}/{name}{suffix}"
                try:
                    data = zf.read(member)
                except KeyError:
                    raise NodeError(f"{archive.name} from certutil lacks {member}") from None
                handle, staging = tempfile.mkstemp(prefix=f".{name}-", dir=folder)
                try:
                    os.fchmod(handle, mode)
                    with os.fdopen(handle, "wb") as out:
                        out.write(data)
                    os.replace(staging, folder / f"{name}{suffix}")
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(staging)
                    raise
