"""Connection-request secrets encrypted at rest."""

from __future__ import annotations

import os
import stat

import pytest

from cwmpgw.store.secretbox import SecretBox, SecretBoxError, load_or_create_key


def test_round_trip_and_context_binding() -> None:
    box = SecretBox(os.urandom(32))
    token = box.encrypt("pa55", "dev-1")
    assert "pa55" not in token
    assert box.decrypt(token, "dev-1") == "pa55"
    assert box.encrypt("pa55", "dev-1") != token  # a fresh nonce each time
    with pytest.raises(SecretBoxError):
        box.decrypt(token, "dev-2")
    with pytest.raises(SecretBoxError):
        SecretBox(os.urandom(32)).decrypt(token, "dev-1")
    with pytest.raises(SecretBoxError):
        box.decrypt("v9:xyz", "dev-1")
    with pytest.raises(SecretBoxError):
        box.decrypt("v1:!!!", "dev-1")


def test_key_file_created_private_and_reused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "sub" / "connreq.key")
    key = load_or_create_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_key(path) == key


def test_bad_key_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "k"
    path.write_text("not base64!")
    with pytest.raises(SecretBoxError):
        load_or_create_key(str(path))
    path.write_text("c2hvcnQ=")
    with pytest.raises(SecretBoxError, match="32-byte"):
        load_or_create_key(str(path))
