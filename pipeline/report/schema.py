"""The ``report.json`` contract: the shipped JSON Schema, its version, and the check a report passes.

The schema (``report.schema.json`` beside this module; ``eegmi schema`` prints it) says which
keys a report holds and what each holds. A few facts relate two keys (equal lengths, a
permutation, a square matrix), which JSON Schema cannot state; :func:`validate_report` checks
them after the schema. The writer and the renderer both pass a report through
:func:`checked_report`, so every report written passes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import PurePath

import numpy as np

from pipeline.errors import InputError
from pipeline.schemas import check_against_schema, load_schema

REPORT_SCHEMA_VERSION: int = load_schema("report")["properties"]["schema_version"]["const"]


def to_json_native(value, key: str = "report"):
    """Convert numpy scalars/arrays, tuples and paths to plain JSON types, recursively.

    Non-finite floats become ``None`` (JSON has no NaN); mapping keys become strings.

    Parameters
    ----------
    value : object
        A report or any part of it.
    key : str
        Dotted location of ``value``, used in error messages.

    Returns
    -------
    object
        The same structure built only from dict, list, str, int, float, bool and None.

    Raises
    ------
    InputError
        If a value has a type JSON cannot represent.
    """
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, PurePath):
        return os.fspath(value)
    if isinstance(value, np.ndarray):
        return [to_json_native(item, f"{key}[{i}]") for i, item in enumerate(value.tolist())]
    if isinstance(value, Mapping):
        return {str(name): to_json_native(item, f"{key}.{name}") for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_native(item, f"{key}[{i}]") for i, item in enumerate(value)]
    raise InputError(key, f"holds a {type(value).__name__}, which JSON cannot represent")


def checked_report(report, where: str | os.PathLike = "report", key: str = "report") -> dict:
    """``report`` in JSON-native form (:func:`to_json_native`, located as ``key`` in messages) with
    its ``schema_version`` (:func:`with_schema_version`), checked by :func:`validate_report`."""
    native = with_schema_version(to_json_native(report, key))
    validate_report(native, where)
    return native


def with_schema_version(report):
    """``report`` with ``schema_version`` first, set to this package's version unless it has one
    (a report of another version then fails :func:`validate_report`, naming the key); anything
    but a mapping is returned as it is, for :func:`validate_report` to refuse."""
    if not isinstance(report, Mapping):
        return report
    return {"schema_version": REPORT_SCHEMA_VERSION, **report}


def _check_mi(mi: Mapping, where: str) -> int:
    n_factors = len(mi["per_factor_nats"])
    for name in ("variance", "kl_prior_nats"):
        if len(mi[name]) != n_factors:
            raise InputError(
                where, f"'mi.{name}' has {len(mi[name])} values; 'mi.per_factor_nats' has {n_factors}"
            )
    if sorted(mi["ranking"]) != list(range(n_factors)):
        raise InputError(where, f"'mi.ranking' is not a permutation of the factor indices 0..{n_factors - 1}")
    return n_factors


def _check_classification(classification: Mapping, where: str, key: str = "classification") -> None:
    confusion = classification["confusion"]
    if any(len(row) != len(confusion) for row in confusion):
        raise InputError(where, f"'{key}.confusion' is not a non-empty square matrix")
    names = classification.get("class_names")
    if names is not None and len(names) != len(confusion):
        raise InputError(
            where,
            f"'{key}.class_names' has {len(names)} names; the confusion matrix has {len(confusion)} classes",
        )
    interval = classification.get("accuracy_ci95")
    if interval is not None and interval[0] > interval[1]:
        raise InputError(where, f"'{key}.accuracy_ci95' has its low bound above its high one")
    for protocol, figures in classification.get("by_protocol", {}).items():
        _check_classification(figures, where, f"{key}.by_protocol.{protocol}")


def validate_report(report, where: str | os.PathLike = "report.json") -> None:
    """Check a JSON-native report (as read from ``report.json``, or made by ``to_json_native``).

    Required: ``schema_version``, ``dataset``, ``source`` {kind, path, n_trials, n_frames},
    ``config``, ``mi`` {per_factor_nats, variance, kl_prior_nats, total_nats, ranking} and
    ``provenance`` {package_version, store, created}. ``topk``, ``classification`` and
    ``factors`` (which image reports have without a classifier, emotion or scalp blocks) are
    checked in full when present, and the source kind must be one of the data set's; keys the
    schema does not list are allowed.

    Parameters
    ----------
    report : object
        The report: dicts, lists, strings, finite numbers, booleans and None.
    where : str or path-like
        Name used in error messages (usually the report file).

    Raises
    ------
    InputError
        One line naming ``where`` and the first key at fault (e.g. ``'mi.ranking'``).
    """
    check_against_schema(report, "report", where)
    where = os.fspath(where)
    n_factors = _check_mi(report["mi"], where)
    if "classification" in report:
        _check_classification(report["classification"], where)
    for i, factor in enumerate(report.get("factors", [])):
        if factor["index"] >= n_factors:
            expected = f"expected a factor index 0..{n_factors - 1}"
            raise InputError(where, f"'factors[{i}].index' is {factor['index']}; {expected}")
    if report.get("stability") is not None:
        _check_stability(report, where)


def _check_stability(report: Mapping, where: str) -> None:
    """Seed counts stay within the run's seeds: a factor and each of its blocks are found in
    1..n_seeds seeds, the factor linked in at most as many as found; every influential factor of
    a run with seed stability carries its counts."""
    n_seeds = report["stability"]["n_seeds"]

    def check_count(value: int, key: str, low: int, high: int) -> None:
        if not low <= value <= high:
            raise InputError(where, f"'{key}' is {value!r}; expected {low}..{high}")

    for i, factor in enumerate(report.get("factors", [])):
        found = factor.get("stability")
        if found is None:
            if factor.get("influential", True):
                raise InputError(where, f"'factors[{i}].stability' is missing for an influential factor")
            continue
        check_count(found["seeds_found"], f"factors[{i}].stability.seeds_found", 1, n_seeds)
        if "seeds_linked" in found:
            key = f"factors[{i}].stability.seeds_linked"
            check_count(found["seeds_linked"], key, 0, found["seeds_found"])
        for b, block in enumerate(factor.get("blocks", [])):
            if "seeds_found" in block:
                key = f"factors[{i}].blocks[{b}].seeds_found"
                check_count(block["seeds_found"], key, 1, n_seeds)
            if "seeds_linked" in block:
                key = f"factors[{i}].blocks[{b}].seeds_linked"
                check_count(block["seeds_linked"], key, 0, n_seeds)
