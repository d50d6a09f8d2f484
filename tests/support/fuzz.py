"""Byte-level mutations of valid messages, for the fuzz tests (hypothesis)."""

from __future__ import annotations

from hypothesis import strategies as st

__all__ = ["mutate_bytes"]


def mutate_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    """One to four deletions, insertions, replacements or duplications of up to 40 bytes."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(out)))
        op = draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
        size = draw(st.integers(1, 40))
        if op == "delete":
            del out[at : at + size]
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=size))
        elif op == "replace" and at < len(out):
            out[at] = draw(st.integers(0, 255))
        else:
            out[at:at] = out[at : at + size]
    return bytes(out)
