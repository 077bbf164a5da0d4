"""Typed access to the ``--conf key value`` pairs MONAI Label hands the app as strings.

Every option is parsed once, here, so a bad value fails at start-up with the option's name.
"""

from __future__ import annotations

import os
from typing import Mapping

TRUE = {"true", "1", "yes", "on"}
FALSE = {"false", "0", "no", "off"}


class ConfError(ValueError):
    """A ``--conf`` value or a request parameter that cannot be used as given."""


class NothingToTrainError(ConfError):
    """A training request that a trainer has nothing to learn from (a decoder head without new structures)."""


def as_bool(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ConfError(f"'{name}' must be true or false, got {value!r}")


def as_int(value: object, name: str, minimum: int | None = None) -> int:
    if isinstance(value, bool):
        raise ConfError(f"'{name}' must be an integer, got {value!r}")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfError(f"'{name}' must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ConfError(f"'{name}' must be >= {minimum}, got {number}")
    return number


def as_float(value: object, name: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool):
        raise ConfError(f"'{name}' must be a number, got {value!r}")
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ConfError(f"'{name}' must be a number, got {value!r}") from None
    if (low is not None and number < low) or (high is not None and number > high):
        raise ConfError(f"'{name}' must be in [{low}, {high}], got {number}")
    return number


class Conf:
    """Reads options from ``--conf`` with a default; unknown keys are left to other readers."""

    def __init__(self, conf: Mapping[str, str] | None):
        self._conf = dict(conf or {})

    def raw(self, key: str, default: str | None = None) -> str | None:
        return self._conf.get(key, default)

    def bool(self, key: str, default: bool) -> bool:
        return as_bool(self._conf[key], key) if key in self._conf else default

    def int(self, key: str, default: int, minimum: int | None = None) -> int:
        return as_int(self._conf[key], key, minimum) if key in self._conf else default

    def float(self, key: str, default: float, low: float | None = None, high: float | None = None) -> float:
        return as_float(self._conf[key], key, low, high) if key in self._conf else default

    def path(self, key: str, default: str) -> str:
        return os.path.abspath(os.path.expanduser(self._conf.get(key, default)))

    def list(self, key: str, default: list[str]) -> list[str]:
        if key not in self._conf:
            return list(default)
        return [item.strip() for item in self._conf[key].split(",") if item.strip()]
