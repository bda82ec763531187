"""Checks shared by every stage: the typed settings' base class and number types, and JSON-native
values (atomic file writes and timestamps are in :mod:`pipeline.files`).

Settings (presets and configs) are frozen pydantic models: Prefect validates them as flow
parameters and shows them as forms, ``model_dump(mode="json")`` is what report.json and the
store record, and ``model_validate`` rebuilds them. A bad value raises :class:`InputError` in one
line naming the setting, as every other bad input does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Self

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError

from pipeline.errors import InputError


def _whole_number(value: Any) -> int:
    # bool is an int subclass, and 3.0 or "3" would pass pydantic's lax mode: neither is a count.
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError("must be a whole number")
    return int(value)


def _real_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError("must be a number")
    return float(value)


WholeNumber = Annotated[int, BeforeValidator(_whole_number)]
PositiveInt = Annotated[int, BeforeValidator(_whole_number), Field(ge=1)]
NonNegativeInt = Annotated[int, BeforeValidator(_whole_number), Field(ge=0)]
RealNumber = Annotated[float, BeforeValidator(_real_number), Field(allow_inf_nan=False)]
PositiveNumber = Annotated[float, BeforeValidator(_real_number), Field(gt=0, allow_inf_nan=False)]
NonNegativeNumber = Annotated[float, BeforeValidator(_real_number), Field(ge=0, allow_inf_nan=False)]
Flag = StrictBool


# A longer offending value is left out of the message: the field's name already points at it.
_MAX_SHOWN = 60


def one_line(error: ValidationError) -> str:
    """Every problem pydantic found, as ``field.sub: what is wrong (got value)`` joined by ``;``."""
    problems = []
    for item in error.errors(include_url=False):
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        message = message.removeprefix("Value error, ")
        if item["type"] == "value_error" and not item["loc"]:
            problems.append(message)  # a check of several fields says which ones itself
            continue
        where = ".".join(str(part) for part in item["loc"])
        cause = item.get("ctx", {}).get("error")
        if isinstance(cause, InputError):  # a shared check that names the value's position itself
            problems.append(f"{where}: {cause.problem}")
            continue
        got = repr(item["input"])
        got = "" if item["type"] == "missing" or len(got) > _MAX_SHOWN else f" (got {got})"
        problems.append(f"{where}: {message[:1].lower()}{message[1:]}{got}")
    return "; ".join(problems)


class ConfigModel(BaseModel):
    """Base of the run settings: immutable, unknown keys refused, bad values an InputError."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, *positional: Any, **values: Any) -> None:
        # Positional values fill the fields in their declared order, as a dataclass's would.
        names = list(type(self).model_fields)
        if len(positional) > len(names):
            raise InputError(type(self).__name__, f"takes at most {len(names)} values, got {len(positional)}")
        twice = sorted(set(names[: len(positional)]) & set(values))
        if twice:
            raise InputError(type(self).__name__, f"{twice} given by position and by name")
        try:
            super().__init__(**dict(zip(names, positional, strict=False)), **values)
        except ValidationError as error:
            raise InputError(type(self).__name__, one_line(error)) from None

    # Tells pydantic this __init__ only validates, as BaseModel's does: nested and model_validate
    # validation then skip it, so a nested model's problem is reported once, with its path.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as error:
            raise InputError(cls.__name__, one_line(error)) from None

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied, checked like a new instance (``model_copy`` is not)."""
        return type(self).model_validate({**dict(self), **changes})


def check_positive_int(where: str, value: Any) -> int:
    """``value`` as an int, raising an InputError naming ``where`` unless it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InputError(where, f"{value!r} must be a positive integer")
    return int(value)


def check_json_native(value: Any, where: str, name: str = "attrs") -> None:
    """Raise unless ``value`` survives a JSON round trip unchanged.

    Accepted: dict with str keys, list, tuple, str, bool, int, finite float and None, nested.

    Parameters
    ----------
    value : object
        The value to check.
    where : str
        What the value belongs to, used in the error (e.g. the store path).
    name : str
        How to spell the value's position in the error, e.g. ``"attrs['config']"``.

    Raises
    ------
    InputError
        Naming the first offending position and its type.
    """
    # numpy scalars other than float64 (a float subclass) are rejected: JSON would refuse or
    # silently reshape them.
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InputError(where, f"{name} is {value}, which JSON cannot hold")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InputError(
                    where, f"{name} has key {key!r} of type {type(key).__name__}; keys must be str"
                )
            check_json_native(item, where, f"{name}[{key!r}]")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_json_native(item, where, f"{name}[{index}]")
        return
    is_numpy = isinstance(value, np.ndarray | np.generic)
    hint = "; convert it with .tolist() or float()/int()" if is_numpy else ""
    raise InputError(where, f"{name} is of type {type(value).__name__}, which is not JSON-native{hint}")
