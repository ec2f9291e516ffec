"""The data tests' guard: a missing shared dataset skips a test locally and fails it in CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require_data


def test_missing_data_fails_the_test_in_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="shared data not found"):
        require_data(tmp_path / "absent")


def test_missing_data_skips_the_test_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="shared data not found"):
        require_data(tmp_path / "absent")


def test_present_data_is_returned(tmp_path: Path) -> None:
    assert require_data(tmp_path) == tmp_path
