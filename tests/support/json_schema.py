"""A small JSON Schema validator for the subset the gateway's OpenAPI document uses.

The tests check real API answers (and example requests) against the served document;
``jsonschema`` is not a dependency, and the document uses little of JSON Schema 2020-12:

- assertions: ``type`` (a name or a list; ``"null"`` in the list is how a value is made
  nullable), ``enum``, ``const``, ``properties``, ``required``, ``additionalProperties``
  (``false`` or a schema), ``items``, ``minItems``, ``maxItems``, ``minLength``,
  ``maxLength``, ``pattern`` (searched, Python ``re``), ``minimum``, ``maximum``,
  ``exclusiveMinimum``, ``oneOf`` (exactly one), ``allOf``, and ``$ref`` to
  ``#/...`` in the same document;
- annotations, ignored: ``description``, ``title``, ``examples``, ``default``,
  ``discriminator``, ``writeOnly``, ``readOnly``, ``contentEncoding``.

Any other keyword is an error (:class:`SchemaError`), so the document cannot start
using one that this module would silently skip. As in JSON Schema, a keyword about
strings, numbers, objects or arrays ignores values of other types. One difference: an
``integer`` must be a Python int (JSON ``2``), not a float with no fraction (``2.0``),
because that is what a client reads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["SchemaError", "assert_valid", "check_subset", "errors"]

_ANNOTATIONS = frozenset(
    {
        "description",
        "title",
        "examples",
        "default",
        "discriminator",
        "writeOnly",
        "readOnly",
        "contentEncoding",
        "format",
    }
)
_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}


class SchemaError(Exception):
    """The schema itself uses something outside the subset."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, 1 is 1.0, and containers compare item by item."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _resolve(root: Mapping[str, Any], ref: str) -> Mapping[str, Any]:
    if not ref.startswith("#/"):
        raise SchemaError(f"only local references are supported: {ref}")
    node: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, Mapping) or part not in node:
            raise SchemaError(f"unresolvable reference {ref}")
        node = node[part]
    if not isinstance(node, Mapping):
        raise SchemaError(f"{ref} is not a schema")
    return node


def errors(root: Mapping[str, Any], schema: Any, value: Any, where: str = "$") -> list[str]:
    """Every way ``value`` fails ``schema`` (resolving ``$ref`` in ``root``); [] if none."""
    if schema is True:
        return []
    if schema is False:
        return [f"{where}: no value is allowed here"]
    if not isinstance(schema, Mapping):
        raise SchemaError(f"{where}: a schema must be an object, not {schema!r}")
    out: list[str] = []
    for keyword, arg in schema.items():
        if keyword in _ANNOTATIONS:
            continue
        check = _KEYWORDS.get(keyword)
        if check is None:
            raise SchemaError(f"{where}: unsupported keyword {keyword!r}")
        out += check(root, schema, arg, value, where)
    return out


def assert_valid(root: Mapping[str, Any], schema: Any, value: Any, where: str = "$") -> None:
    problems = errors(root, schema, value, where)
    if problems:
        raise AssertionError("\n  ".join(["not valid against the schema:", *problems[:20]]))


def check_subset(schema: Any, where: str = "$") -> None:
    """Raise SchemaError if ``schema``, or any schema inside it, uses another keyword."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, Mapping):
        raise SchemaError(f"{where}: a schema must be an object, not {schema!r}")
    for keyword, arg in schema.items():
        if keyword not in _KEYWORDS and keyword not in _ANNOTATIONS:
            raise SchemaError(f"{where}: unsupported keyword {keyword!r}")
        if keyword == "properties":
            for name, sub in arg.items():
                check_subset(sub, f"{where}.{name}")
        elif keyword in ("items", "additionalProperties"):
            check_subset(arg, f"{where}/{keyword}")
        elif keyword in ("oneOf", "allOf"):
            for i, sub in enumerate(arg):
                check_subset(sub, f"{where}/{keyword}[{i}]")


def _type(root: Any, schema: Any, arg: Any, value: Any, where: str) -> list[str]:
    names = [arg] if isinstance(arg, str) else list(arg)
    for name in names:
        if name not in _TYPES:
            raise SchemaError(f"{where}: unknown type {name!r}")
    if any(_TYPES[name](value) for name in names):
        return []
    return [f"{where}: {value!r:.80} is not of type {' or '.join(names)}"]


def _enum(root: Any, schema: Any, arg: Any, value: Any, where: str) -> list[str]:
    if any(_equal(value, option) for option in arg):
        return []
    return [f"{where}: {value!r:.80} is not one of {arg!r:.200}"]


def _const(root: Any, schema: Any, arg: Any, value: Any, where: str) -> list[str]:
    return [] if _equal(value, arg) else [f"{where}: {value!r:.80} is not {arg!r}"]


def _properties(root: Any, schema: Any, arg: Any, value: Any, where: str) -> list[str]:
    if not isinstance(value, dict):
        return []
    out: list[str] = []
    for name, sub in arg.items():
        if name in value:
            out += errors(root, sub, value[name], f"{where}.{name}")
    return out


def _required(root: Any, schema: Any, arg: Any, value: Any, where: str) -> list[str]:
    if not isinstance(value, dict):
        return []
    return [f"{where}: {name!r} is required" for name in arg if name not in value]


def _additional(root: Any, schema: Any, arg: Any, value: Any, where: str) -> list[str]:
    if not isinstance(value, dict):
        return []
    known = schema.get("properties", {})
    out: list[str] = []
    for name, item in value.items():
        if name in known:
            continue
        if arg is False:
            out.append(f"{where}: {name!r} is not allowed (not in {sorted(known)})")
        else:
            out += errors(root, arg, item, f"{where}.{name}")
    return out


def _items(root: Any, schema: Any, arg: Any, value: Any, where: str) -> list[str]:
    if not isinstance(value, list):
        return []
    out: list[str] = []
    for i, item in enumerate(value):
        out += errors(root, arg, item, f"{where}[{i}]")
    return out


def _bound(kind: str, compare: Any, message: str, size: Any = None) -> Any:
    def check(root: Any, schema: Any, arg: Any, value: Any, where: str) -> list[str]:
        if not _TYPES[kind](value):
            return []
        measured = value if size is None else size(value)
        return [] if compare(measured, arg) else [f"{where}: {value!r:.80} {message} {arg}"]

    return check


def _pattern(root: Any, schema: Any, arg: Any, value: Any, where: str) -> list[str]:
    if not isinstance(value, str) or re.search(arg, value):
        return []
    return [f"{where}: {value!r:.80} does not match {arg!r}"]


def _one_of(root: Any, schema: Any, arg: Any, value: Any, where: str) -> list[str]:
    results = [errors(root, sub, value, f"{where}<oneOf[{i}]>") for i, sub in enumerate(arg)]
    passed = [i for i, problems in enumerate(results) if not problems]
    if len(passed) == 1:
        return []
    if passed:
        return [f"{where}: matches more than one of oneOf: {passed}"]
    # Say why each branch failed, the closest (fewest problems) first.
    detail = [p for problems in sorted(results, key=len) for p in problems[:3]]
    return [f"{where}: matches none of oneOf", *detail[:12]]


def _all_of(root: Any, schema: Any, arg: Any, value: Any, where: str) -> list[str]:
    out: list[str] = []
    for sub in arg:
        out += errors(root, sub, value, where)
    return out


def _ref(root: Any, schema: Any, arg: Any, value: Any, where: str) -> list[str]:
    return errors(root, _resolve(root, arg), value, where)


_KEYWORDS: dict[str, Any] = {
    "type": _type,
    "enum": _enum,
    "const": _const,
    "properties": _properties,
    "required": _required,
    "additionalProperties": _additional,
    "items": _items,
    "minItems": _bound("array", lambda n, a: n >= a, "has fewer items than", len),
    "maxItems": _bound("array", lambda n, a: n <= a, "has more items than", len),
    "minLength": _bound("string", lambda n, a: n >= a, "is shorter than", len),
    "maxLength": _bound("string", lambda n, a: n <= a, "is longer than", len),
    "minimum": _bound("number", lambda n, a: n >= a, "is less than"),
    "maximum": _bound("number", lambda n, a: n <= a, "is more than"),
    "exclusiveMinimum": _bound("number", lambda n, a: n > a, "is not more than"),
    "pattern": _pattern,
    "oneOf": _one_of,
    "allOf": _all_of,
    "$ref": _ref,
}
