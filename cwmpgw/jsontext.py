"""The JSON text the gateway writes to Redis in every session, without per-call setup.

``json.dumps`` with any argument but the defaults builds a ``JSONEncoder`` and a C encoder
for each call: about as long as encoding a small event. A session encodes half a dozen
(its events, its task twice, the device's fields) and one ``[value, type]`` pair per
parameter it reports or reads. The encoders here are made once; their text is exactly
``json.dumps``'s (tests/unit/test_jsontext.py holds them to it).
"""

from __future__ import annotations

import json
from json import encoder as _encoder
from typing import Any, Final

__all__ = ["compact", "value_pair"]


def _not_serializable(o: object) -> Any:
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


_C_MAKE_ENCODER: Final = getattr(_encoder, "c_make_encoder", None)
# No circular-reference markers (a dict per call): what is encoded here is built from
# parsed JSON and messages, never cyclic, and a cycle would still fail (RecursionError).
_COMPACT: Final = (
    None
    if _C_MAKE_ENCODER is None
    else _C_MAKE_ENCODER(
        None,  # markers
        _not_serializable,  # default
        _encoder.encode_basestring,  # ensure_ascii=False
        None,  # indent
        ":",
        ",",
        False,  # sort_keys
        False,  # skipkeys
        True,  # allow_nan, as json.dumps
    )
)
_ASCII: Final = _encoder.encode_basestring_ascii


def compact(obj: Any) -> str:
    """``json.dumps(obj, separators=(",", ":"), ensure_ascii=False)``."""
    if _COMPACT is None:  # pragma: no cover (CPython without its _json accelerator)
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return "".join(_COMPACT(obj, 0))


def value_pair(value: str, type_: str) -> str:
    """``json.dumps([value, type_])``: how a parameter's value and type are stored."""
    if type(value) is str and type(type_) is str:
        return f"[{_ASCII(value)}, {_ASCII(type_)}]"
    return json.dumps([value, type_])
