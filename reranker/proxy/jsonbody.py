"""Strict JSON for request bodies: anything a client sends is a value or a 400, never a 500.

Python's ``json`` accepts what Elasticsearch refuses and fails on inputs in ways that are not
``JSONDecodeError``. :func:`loads_strict` closes those gaps before any other code sees the
value:

- the bytes must be UTF-8 (no BOM sniffing of UTF-16/32, as ``json.loads(bytes)`` would do);
- nesting of objects and arrays deeper than ``max_depth`` is refused before parsing (the C
  parser would otherwise raise ``RecursionError``);
- a number literal longer than ``max_digits`` characters is refused (Python raises
  ``ValueError`` past 4,300 digits, and such numbers mean nothing to Elasticsearch), as are
  floats that overflow to infinity and the non-JSON constants ``NaN``/``Infinity``;
- a string (key or value) holding an unpaired UTF-16 surrogate (``"\\ud800"``) is refused:
  it cannot be encoded as UTF-8, so it could not be logged, forwarded or echoed;
- a duplicated key in one object is refused, as Elasticsearch's parser does.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from reranker.proxy.errors import ProxyError

#: JSON strings, so that brackets inside them are not counted as nesting. Linear on any
#: input: the possessive ``*+`` never backtracks, and an unterminated string (optionally
#: ending in a lone backslash) runs to the end of the text instead of failing, so no later
#: quote starts another scan of the same tail (``"`` then ``\"`` repeated was quadratic).
_STRING = re.compile(r'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_OPEN = np.frombuffer(b"[{", dtype=np.uint8)
_CLOSE = np.frombuffer(b"]}", dtype=np.uint8)
#: JSON's own whitespace (Elasticsearch's parser skips exactly these)
JSON_WHITESPACE = " \t\r\n"


class BodyError(ProxyError):
    """A request body that is not acceptable JSON: always a 400."""

    def __init__(
        self, reason: str, error_type: str = "parsing_exception", *, syntax: bool = False
    ) -> None:
        super().__init__(400, error_type, reason)
        #: the text is not JSON at all (else: JSON whose content is refused)
        self.syntax = syntax


def _reject_constant(name: str) -> Any:
    raise BodyError(f"[{name}] is not a JSON number; send a finite number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BodyError(f"duplicate field [{_printable(key)}]", "x_content_parse_exception")
        out[key] = value
    return out


def _printable(text: str, limit: int = 60) -> str:
    safe = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return safe if len(safe) <= limit else safe[:limit] + "..."


def nesting_depth(text: str) -> int:
    """The deepest nesting of objects/arrays in ``text`` (strings skipped); a cheap pre-check,
    exact for valid JSON. Linear time, in C (regex and numpy): a 1 MiB body takes
    milliseconds, so the event loop that runs it is never held up."""
    codes = np.frombuffer(_STRING.sub("", text).encode("utf-8", "surrogatepass"), np.uint8)
    steps = np.isin(codes, _OPEN).astype(np.int64) - np.isin(codes, _CLOSE)
    if not steps.any():
        return 0
    return max(0, int(np.cumsum(steps).max()))


def _check_strings(value: Any) -> None:
    """Raise on any key or string value that cannot be UTF-8 (an unpaired surrogate)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, dict):
            for key, inner in item.items():
                _check_text(key)
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BodyError(
            "a string holds an unpaired UTF-16 surrogate escape (such as \\ud800); "
            "strings must be valid Unicode"
        ) from None


def loads_strict(
    raw: bytes | str,
    *,
    max_depth: int,
    max_digits: int,
    what: str = "request body",
) -> Any:
    """``raw`` parsed as JSON under the rules above; :class:`BodyError` (400) otherwise."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BodyError(f"the {what} is not UTF-8", syntax=True) from None
    else:
        text = raw
    depth = nesting_depth(text)
    if depth > max_depth:
        raise BodyError(
            f"the {what} nests objects and arrays {depth} deep, beyond this proxy's limit of "
            f"{max_depth}"
        )

    def parse_int(literal: str) -> int:
        if len(literal) > max_digits:
            raise BodyError(
                f"a number in the {what} has {len(literal)} digits, beyond this proxy's limit "
                f"of {max_digits}"
            )
        return int(literal)

    def parse_float(literal: str) -> float:
        if len(literal) > max_digits:
            raise BodyError(
                f"a number in the {what} is {len(literal)} characters long, beyond this "
                f"proxy's limit of {max_digits}"
            )
        value = float(literal)
        if value in (float("inf"), float("-inf")):
            raise BodyError(f"a number in the {what} is out of range: {literal}")
        return value

    try:
        value = json.loads(
            text,
            parse_int=parse_int,
            parse_float=parse_float,
            parse_constant=_reject_constant,
            object_pairs_hook=_no_duplicates,
        )
    except json.JSONDecodeError as exc:
        raise BodyError(
            f"the {what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            syntax=True,
        ) from None
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise BodyError(f"the {what} nests too deeply") from None
    _check_strings(value)
    return value
