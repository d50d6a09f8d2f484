"""Offline validation of envelopes against the Broadband Forum CWMP schemas.

Loads the vendored validator (tests/data/cwmp/validate.py) by path, so tests need neither
the network nor that file on sys.path.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

__all__ = ["assert_valid", "validate_envelope"]

_VALIDATOR_PATH = Path(__file__).resolve().parent / "data" / "cwmp" / "validate.py"


def _load() -> Callable[[bytes], list[str]]:
    spec = importlib.util.spec_from_file_location("_cwmp_schema_validate", _VALIDATOR_PATH)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {_VALIDATOR_PATH}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    validate: Callable[[bytes], list[str]] = module.validate_envelope
    return validate


validate_envelope = _load()


def assert_valid(envelope: bytes) -> None:
    """Fail with every schema problem of ``envelope`` listed."""
    problems = validate_envelope(envelope)
    if problems:
        listing = "\n  ".join(problems)
        raise AssertionError(
            f"envelope is not schema-valid:\n  {listing}\n{envelope.decode('utf-8', 'replace')}"
        )
