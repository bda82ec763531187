"""The JSON Schemas shipped with the package, and checks against them that fail in one line.

``report.json`` and the DEAP-style data manifests are described by JSON Schema files inside the
package (``pipeline/report/report.schema.json``, ``pipeline/manifest.schema.json``), so other
tools can validate them too; ``eegmi schema`` prints them. :func:`check_against_schema` turns the
first violation into an :class:`~pipeline.errors.InputError` that names the file and the key path
(``mi.ranking``, ``layouts[0].pattern``), as every other bad-input error does.

JSON has no NaN or infinity, so a "number" here is a finite one: a NaN read from a lenient
JSON file, or left in a report before it is written, is refused like any other wrong type.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

import jsonschema

from pipeline.errors import InputError

# Schema name -> its file, relative to the ``pipeline`` package.
SCHEMA_FILES = {
    "report": "report/report.schema.json",
    "manifest": "manifest.schema.json",
}
# How errors name the rules a document broke.
_RULES = {"report": "the report contract", "manifest": "the manifest schema"}
_TYPE_NAMES = {
    "object": "an object",
    "array": "a list",
    "string": "a string",
    "number": "a finite number",
    "integer": "a whole number",
    "boolean": "true or false",
    "null": "null",
}
# Longest value quoted in an error; a whole list or object is described, never printed.
_SHOWN_CHARS = 80


def schema_text(name: str) -> str:
    """The schema file ``name`` ("report" or "manifest") exactly as shipped."""
    if name not in SCHEMA_FILES:
        raise InputError("schema", f"{name!r} is not one of {sorted(SCHEMA_FILES)}")
    return resources.files("pipeline").joinpath(SCHEMA_FILES[name]).read_text(encoding="utf-8")


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """The parsed schema ``name`` ("report" or "manifest"); do not modify it."""
    return json.loads(schema_text(name))


def _is_finite_number(checker, value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_whole_number(checker, value) -> bool:
    return _is_finite_number(checker, value) and (isinstance(value, int) or value.is_integer())


_FiniteValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many(
        {"number": _is_finite_number, "integer": _is_whole_number}
    ),
)


@functools.cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return _FiniteValidator(schema)


def key_path(parts: Iterable[str | int], root: str) -> str:
    """``["factors", 0, "index"]`` -> ``"factors[0].index"``; no parts -> ``root``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or root


def _shown(value) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    try:
        text = repr(value) if isinstance(value, str) else json.dumps(value)
    except TypeError:  # not JSON-native (a numpy array left in a report)
        return f"a {type(value).__name__}"
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"


def _expected_types(types: str | Sequence[str]) -> str:
    names = [_TYPE_NAMES.get(kind, kind) for kind in ([types] if isinstance(types, str) else types)]
    return " or ".join(names)


def _problem(error: jsonschema.ValidationError, name: str) -> str:
    """One line saying which key breaks which rule."""
    keyword, rule, value = error.validator, error.validator_value, error.instance
    key = key_path(error.absolute_path, name)
    if keyword == "required":
        missing = next(field for field in rule if field not in value)
        return f"missing key '{key_path([*error.absolute_path, missing], name)}' required by {_RULES[name]}"
    bounds = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    if keyword == "type":
        expected = _expected_types(rule)
    elif keyword == "enum":
        expected = f"one of {rule}"
    elif keyword == "const":
        expected = json.dumps(rule)
    elif keyword in bounds:
        expected = f"a value {bounds[keyword]} {rule}"
    elif keyword in ("minItems", "maxItems"):
        exact = error.schema.get("minItems") == error.schema.get("maxItems")
        bound = "exactly" if exact else ("at least" if keyword == "minItems" else "at most")
        return f"'{key}' has {len(value)} item(s); expected {bound} {rule}"
    elif keyword == "uniqueItems":
        return f"'{key}' repeats an item; expected distinct items"
    elif keyword == "minLength":
        expected = f"at least {rule} character(s)"
    elif keyword == "pattern":
        expected = error.schema.get("description", f"a string matching {rule}")
    else:
        return f"'{key}': {error.message[: _SHOWN_CHARS * 2]}"
    return f"'{key}' is {_shown(value)}; expected {expected}"


def check_against_schema(document, name: str, where: str | os.PathLike) -> None:
    """Check a JSON-native document against the shipped schema ``name``.

    Parameters
    ----------
    document : object
        The document as read from JSON or YAML (dict, list, str, int, float, bool, None).
    name : str
        ``"report"`` or ``"manifest"``.
    where : str or path-like
        The file (or other origin) named in the error.

    Raises
    ------
    InputError
        For the violation closest to the top of the document (the first of equals in schema
        order): ``"<where>: missing key 'mi.ranking' required by the report contract"``,
        ``"<where>: 'topk[0].percent' is 120; expected a value <= 100"``.
    """
    errors = list(_validator(name).iter_errors(document))
    if errors:
        first = min(errors, key=lambda error: len(error.absolute_path))
        raise InputError(where, _problem(first, name))
