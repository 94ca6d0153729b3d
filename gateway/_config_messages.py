"""How a config problem is worded: key paths, "did you mean", and msgspec's and YAML's
messages turned into ``(key path, problem)`` in the words of a config file's reader."""

from __future__ import annotations

import difflib
import re
from typing import Any


def join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def suggest(key: Any, candidates: Any, cutoff: float = 0.75) -> str:
    """`` (did you mean 'x'?)`` when a candidate is close to ``key``, else ""."""
    if not isinstance(key, str):
        return ""
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "null": "null",
}


def _type_name(name: str) -> str:
    # "str | null" -> "a string": null is how YAML spells an empty value, always allowed.
    parts = [p for p in name.split(" | ") if p != "null"] or ["null"]
    return " or ".join(_TYPE_NAMES.get(part, part) for part in parts)


def explain(text: str) -> tuple[str, str]:
    """``(key path, problem)`` from a msgspec ``ValidationError`` text."""
    message, _, at = text.partition(" - at ")
    in_key = re.fullmatch(r"`key` in `\$(.*)`", at)
    path = (in_key[1] if in_key else at.strip("`")).removeprefix("$").lstrip(".")
    missing = re.fullmatch(r"Object missing required field `(.+)`", message)
    if missing:
        return join(path, missing[1]), "required key missing"
    unknown = re.fullmatch(r"Object contains unknown field `(.+)`", message)
    if unknown:
        return join(path, unknown[1]), "unknown key"
    expected = re.fullmatch(r"Expected `([^`]+)`(.*)", message)
    if expected:
        rest = re.sub(r"`([^`]+)`", lambda m: _type_name(m[1]), expected[2])
        rest = re.sub(r"(\d)\.0\b", r"\1", rest)  # "> 0.0" -> "> 0"
        problem = f"expected {_type_name(expected[1])}{rest}"
        return path, f"a key: {problem}" if in_key else problem
    return path, message


def yaml_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__
