"""Pure pieces of issue 11: strict JSON, the allow-list's second line, redaction, card paths,
the local node's credentials file and the file realm's password hashes."""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import pytest

from reranker.config import Settings
from reranker.credentials import (
    LocalCredentials,
    credentials_file,
    credentials_for_url,
    write_credentials,
)
from reranker.errors import ModelError
from reranker.es.file_realm import FileRealm, pbkdf2_hash, verify_pbkdf2
from reranker.models import model_file
from reranker.proxy.errors import ProxyError
from reranker.proxy.jsonbody import BodyError, loads_strict, nesting_depth
from reranker.proxy.reload import redact_paths
from reranker.proxy.request import check_no_scroll, index_allowed


def strict(raw: bytes) -> object:
    return loads_strict(raw, max_depth=8, max_digits=20)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"q": "\\ud800"}',
        b'{"\\udc00": 1}',
        b"[" * 9 + b"]" * 9,
        b'{"n": 1' + b"0" * 25 + b"}",
        b'{"n": 1e999}',
        b'{"n": NaN}',
        b'{"n": -Infinity}',
        b'{"a": 1, "a": 2}',
        b"\xff",
        b'{"a": ',
    ],
    ids=[
        "surrogate",
        "surrogate-key",
        "nesting",
        "digits",
        "overflow",
        "nan",
        "infinity",
        "duplicate",
        "not-utf8",
        "truncated",
    ],
)
def test_strict_json_refuses_with_a_400_what_used_to_be_a_500(raw: bytes) -> None:
    with pytest.raises(BodyError) as caught:
        strict(raw)
    assert caught.value.status == 400


def test_strict_json_accepts_valid_pairs_and_brackets_inside_strings() -> None:
    assert strict(b'{"emoji": "\\ud83d\\ude00", "s": "[[[[[[[[[[[["}') == {
        "emoji": "\U0001f600",
        "s": "[" * 12,
    }
    assert nesting_depth('{"a": [[1], {"b": "]]]]"}]}') == 3


def test_remote_cluster_expressions_are_refused_unless_the_cluster_is_configured() -> None:
    allow = ("beir-*",)
    assert index_allowed("beir-*:reranker-logs-*", allow) == "beir-*:reranker-logs-*"
    assert index_allowed("beir-a:secret", allow) == "beir-a:secret"
    assert index_allowed("beir-a::failures", allow) == "beir-a::failures"
    assert index_allowed("<beir-{now/d}>", allow) == "<beir-{now/d}>"
    assert index_allowed("remote:beir-x", allow, remote_clusters=("remote",)) is None
    assert index_allowed("remote:secret", allow, remote_clusters=("remote",)) == "remote:secret"
    assert index_allowed("beir-a,beir-b", allow) is None


def test_scroll_and_pit_are_refused() -> None:
    with pytest.raises(ProxyError):
        check_no_scroll({}, {"scroll": "1m"})
    with pytest.raises(ProxyError):
        check_no_scroll({"pit": {"id": "x"}}, {})
    check_no_scroll({"query": {}}, {"size": "3"})


def test_redaction_hides_outside_paths_and_hashes(tmp_path: Path) -> None:
    root = tmp_path / "models"
    reason = (
        f"{root}/m/x.onnx: its sha256 0123456789abcdef0123 does not match; /etc/passwd is missing"
    )
    redacted = redact_paths(reason, (root,))
    assert "m/x.onnx" in redacted
    assert "/etc/passwd" not in redacted and str(tmp_path) not in redacted
    assert "0123456789abcdef" not in redacted


def test_card_file_names_must_stay_inside_the_model_folder(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside").write_text("x")
    (folder / "link").symlink_to(tmp_path / "outside")
    (folder / "escape").symlink_to(tmp_path, target_is_directory=True)
    assert model_file(folder, "model.onnx") == folder / "model.onnx"
    assert model_file(folder, "link") == folder / "link"  # a linked file: its hash decides
    for name in ("../outside", "/etc/passwd", "escape/outside", "sub/../../outside", "", 3):
        with pytest.raises(ModelError, match=r"not a file name|outside the model folder"):
            model_file(folder, name)


def test_local_credentials_are_written_0600_and_found_by_loopback_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RERANKER_HOME", str(tmp_path))
    for name in ("RERANKER_ES_API_KEY", "RERANKER_ES_USERNAME", "RERANKER_ES_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    path = write_credentials(9333, LocalCredentials("elastic", "pw"))
    assert path == credentials_file(9333)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert credentials_for_url("http://127.0.0.1:9333") == LocalCredentials("elastic", "pw")
    assert credentials_for_url("http://example.org:9333") is None
    settings = Settings.from_env(es_url="http://localhost:9333")
    assert (settings.es_username, settings.es_password) == ("elastic", "pw")
    assert "pw" not in repr(settings)
    monkeypatch.setenv("RERANKER_ES_API_KEY", "key")
    assert Settings.from_env(es_url="http://127.0.0.1:9333").es_username is None


def test_file_realm_hashes_are_elasticsearchs_pbkdf2_format(tmp_path: Path) -> None:
    salt = bytes(range(32))
    hashed = pbkdf2_hash("secret", cost=1000, salt=salt)
    key = hashlib.pbkdf2_hmac("sha512", b"secret", salt, 1000, dklen=32)
    assert (
        hashed
        == f"{{PBKDF2}}1000${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"
    )
    assert verify_pbkdf2("secret", hashed) and not verify_pbkdf2("other", hashed)
    realm = FileRealm(tmp_path)
    role = {"cluster": [], "indices": [{"names": ["beir-*"], "privileges": ["read"]}]}
    assert realm.grant("reranker-proxy-x", "pw", "reranker_proxy_x", role)
    assert not realm.grant("reranker-proxy-x", "pw", "reranker_proxy_x", role)  # unchanged
    assert (tmp_path / "users_roles").read_text() == "reranker_proxy_x:reranker-proxy-x\n"
    assert (tmp_path / "users").read_text().startswith("reranker-proxy-x:{PBKDF2}")
    assert '"reranker_proxy_x": {"cluster": []' in (tmp_path / "roles.yml").read_text()
