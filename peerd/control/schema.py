"""Request bodies and queries described once: as frozen dataclasses.

How this works: a route's body (or query) is a frozen dataclass whose fields
say, through :func:`member`, what each JSON member must be
(:class:`Text`, :class:`Integer`, :class:`Size`, :class:`Flag`, :class:`TextList`).
:func:`json_schema` renders the class as the JSON Schema the OpenAPI
document publishes, and :func:`parse` checks a decoded JSON object (or a
query string) against the same fields and builds the dataclass, so what the
document promises and what the handler accepts cannot differ. A field with
no default is required; members the class does not name are refused
(``additionalProperties: false``). Rules that tie two members together
(give one of two) live in the class's ``__post_init__``. Every refusal is an
:class:`~engine.errors.InvalidArgument` (HTTP 422).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from engine import jsontext
from engine.errors import InvalidArgument
from peerd.node.config import SIZE_PATTERN, parse_size

__all__ = [
    "Flag",
    "Integer",
    "Kind",
    "ObjectList",
    "Size",
    "Text",
    "TextList",
    "decode_body",
    "json_schema",
    "member",
    "parse",
    "query_parameters",
]

T = TypeVar("T")

INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Text:
    """A string; ``pattern`` is anchored (``^...$``) and must match the whole value."""

    min_length: int = 1
    max_length: int | None = None
    pattern: str | None = None

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "string"}
        if self.min_length:
            out["minLength"] = self.min_length
        if self.max_length is not None:
            out["maxLength"] = self.max_length
        if self.pattern is not None:
            out["pattern"] = self.pattern
        return out

    def check(self, name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise InvalidArgument(f"{name} must be a string")
        if len(value) < self.min_length:
            raise InvalidArgument(f"{name} must be a non-empty string")
        if self.max_length is not None and len(value) > self.max_length:
            raise InvalidArgument(f"{name} must be at most {self.max_length} characters")
        if self.pattern is not None and re.fullmatch(self.pattern, value) is None:
            raise InvalidArgument(f"{name} is not valid: {value!r}")
        return value


@dataclass(frozen=True, slots=True)
class Integer:
    minimum: int = 0
    maximum: int = INT64_MAX
    nullable: bool = False

    def schema(self) -> dict[str, Any]:
        kind: str | list[str] = ["integer", "null"] if self.nullable else "integer"
        return {"type": kind, "minimum": self.minimum, "maximum": self.maximum}

    def check(self, name: str, value: Any) -> int | None:
        if value is None and self.nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(
                f"{name} must be an integer from {self.minimum} to {self.maximum}"
            )
        if not self.minimum <= value <= self.maximum:
            raise InvalidArgument(
                f"{name} must be an integer from {self.minimum} to {self.maximum}"
            )
        return value


@dataclass(frozen=True, slots=True)
class Size:
    """A byte count: an integer, or a string with a unit as the config writes
    sizes (``"10M"``, ``"1G"``, ``"512K"``; binary units), read by the config's
    own :func:`~peerd.node.config.parse_size`."""

    nullable: bool = False

    def schema(self) -> dict[str, Any]:
        kinds: list[dict[str, Any]] = [
            {"type": "integer", "minimum": 0, "maximum": INT64_MAX},
            {"type": "string", "pattern": SIZE_PATTERN},
        ]
        if self.nullable:
            kinds.append({"type": "null"})
        return {"oneOf": kinds}

    def check(self, name: str, value: Any) -> int | None:
        if value is None and self.nullable:
            return None
        if not isinstance(value, bool) and isinstance(value, (int, str)):
            try:
                size = parse_size(value)
            except ValueError:
                pass
            else:
                if 0 <= size <= INT64_MAX:
                    return size
        raise InvalidArgument(f"{name} must be a size: bytes, or a number with K, M, G or T")


@dataclass(frozen=True, slots=True)
class Flag:
    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}

    def check(self, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise InvalidArgument(f"{name} must be true or false")
        return value


@dataclass(frozen=True, slots=True)
class TextList:
    item: Text = Text()

    def schema(self) -> dict[str, Any]:
        return {"type": "array", "items": self.item.schema()}

    def check(self, name: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise InvalidArgument(f"{name} must be a list of strings")
        return tuple(self.item.check(f"each of {name}", v) for v in value)


@dataclass(frozen=True, slots=True)
class ObjectList:
    """A list of objects, each checked and built as ``item`` (a body class)."""

    item: type
    max_items: int = 1000

    def schema(self) -> dict[str, Any]:
        return {"type": "array", "maxItems": self.max_items, "items": json_schema(self.item)}

    def check(self, name: str, value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise InvalidArgument(f"{name} must be a list of objects")
        if len(value) > self.max_items:
            raise InvalidArgument(f"{name}: at most {self.max_items} in one request")
        out: list[Any] = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise InvalidArgument(f"{name}[{index}] must be an object")
            try:
                out.append(parse(self.item, item))
            except InvalidArgument as exc:
                raise InvalidArgument(f"{name}[{index}]: {exc.message}") from exc
        return tuple(out)


Kind = Text | Integer | Size | Flag | TextList | ObjectList


def member(kind: Kind, *, default: Any = dataclasses.MISSING) -> Any:
    """A field of a body or query class: what its JSON member must be; no
    ``default`` makes it required."""
    return dataclasses.field(default=default, metadata={"kind": kind})


def _fields(cls: type) -> list[tuple[str, Kind, bool]]:
    """(name, kind, required) for each field of ``cls``."""
    out = []
    for f in dataclasses.fields(cls):
        kind = f.metadata.get("kind")
        if kind is None:
            raise TypeError(f"{cls.__name__}.{f.name} has no kind: declare it with member()")
        out.append((f.name, kind, f.default is dataclasses.MISSING))
    return out


def json_schema(cls: type) -> dict[str, Any]:
    """The JSON Schema of a body class (an object with exactly these members)."""
    described = _fields(cls)
    out: dict[str, Any] = {"type": "object"}
    required = [name for name, _, needed in described if needed]
    if required:
        out["required"] = required
    out["properties"] = {name: kind.schema() for name, kind, _ in described}
    out["additionalProperties"] = False
    return out


def query_parameters(cls: type) -> list[dict[str, Any]]:
    """The OpenAPI ``in: query`` parameters of a query class."""
    return [
        {"name": name, "in": "query", "required": needed, "schema": kind.schema()}
        for name, kind, needed in _fields(cls)
    ]


def decode_body(data: bytes) -> dict[str, Any]:
    """A request body as the JSON object it must be (``InvalidArgument`` if not)."""
    try:
        value = jsontext.loads(data)
    except RecursionError as exc:
        raise InvalidArgument("the body is not JSON: nested too deeply") from exc
    except ValueError as exc:
        # JSONDecodeError, UnicodeDecodeError, a lone surrogate (jsontext) and
        # an integer of more digits than int() converts
        # (sys.get_int_max_str_digits).
        raise InvalidArgument(f"the body is not JSON: {str(exc)[:200]}") from exc
    if not isinstance(value, dict):
        raise InvalidArgument("the body must be a JSON object")
    return value


def parse(cls: type[T], data: Mapping[str, Any], *, others_ok: bool = False) -> T:
    """Check ``data`` against ``cls``'s fields and build it (``InvalidArgument`` if not).

    ``others_ok``: members ``cls`` does not name are ignored (a query string
    may carry parameters meant for a proxy or a cache), not refused.
    """
    described = _fields(cls)
    unknown = set(data) - {name for name, _, _ in described}
    if unknown and not others_ok:
        raise InvalidArgument(f"unknown option(s): {', '.join(sorted(unknown))}")
    values = {}
    for name, kind, needed in described:
        if name in data:
            values[name] = kind.check(name, data[name])
        elif needed:
            raise InvalidArgument(f"{name} is required")
    return cls(**values)
