"""Typed access to an untrusted nested dict that records problems instead of raising."""
from __future__ import annotations

import re
from typing import Any

from kubernetes.utils import parse_quantity

from .spec import INT_OR_PERCENT


class Reader:
    """Typed access to a nested dict that records problems instead of raising."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems

    def obj(self, parent: dict[str, Any], key: str, path: str) -> dict[str, Any]:
        value = parent.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problems.append(f'{path}{key} must be an object')
            return {}
        return value

    def str_(self, parent: dict[str, Any], key: str, path: str, default: str | None = None,
             choices: tuple[str, ...] | None = None, pattern: re.Pattern[str] | None = None) -> str | None:
        value = parent.get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            self.problems.append(f'{path}{key} must be a non-empty string')
            return default
        if choices and value not in choices:
            self.problems.append(f'{path}{key} must be one of {", ".join(choices)} (got {value!r})')
            return default
        if pattern and not pattern.match(value):
            self.problems.append(f'{path}{key} has an invalid format: {value!r}')
            return default
        return value

    def int_(self, parent: dict[str, Any], key: str, path: str, default: int | None = None,
             minimum: int | None = None, maximum: int | None = None,
             choices: tuple[int, ...] | None = None) -> int | None:
        value = parent.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.problems.append(f'{path}{key} must be an integer')
            return default
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = f'>= {minimum}' if maximum is None else f'in [{minimum}, {maximum}]'
            self.problems.append(f'{path}{key} must be {bounds} (got {value})')
            return default
        if choices and value not in choices:
            self.problems.append(f'{path}{key} must be one of {", ".join(map(str, choices))} (got {value})')
            return default
        return value

    def num(self, parent: dict[str, Any], key: str, path: str, low: float, high: float | None,
            low_open: bool = False) -> float | None:
        value = parent.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.problems.append(f'{path}{key} must be a number')
            return None
        if value < low or (low_open and value == low) or (high is not None and value > high):
            self.problems.append(f'{path}{key} is out of range (got {value})')
            return None
        return float(value)

    def bool_(self, parent: dict[str, Any], key: str, path: str, default: bool | None = None) -> bool | None:
        value = parent.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problems.append(f'{path}{key} must be a boolean')
            return default
        return value

    def quantity(self, parent: dict[str, Any], key: str, path: str, default: str | None = None) -> str | None:
        value = parent.get(key)
        if value is None:
            return default
        text = str(value)
        try:
            if isinstance(value, bool) or parse_quantity(text) <= 0:
                raise ValueError
        except (ValueError, TypeError, ArithmeticError):
            self.problems.append(f'{path}{key} must be a positive quantity (got {value!r})')
            return default
        return text

    def int_or_percent(self, parent: dict[str, Any], key: str, path: str) -> int | str | None:
        value = parent.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not (
                (isinstance(value, int) and value >= 0) or (isinstance(value, str) and INT_OR_PERCENT.match(value))):
            self.problems.append(f'{path}{key} must be a non-negative integer or a percentage (got {value!r})')
            return None
        return value

    def str_map(self, parent: dict[str, Any], key: str, path: str) -> dict[str, str]:
        value = parent.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            self.problems.append(f'{path}{key} must map strings to strings')
            return {}
        return dict(value)

    def list_(self, parent: dict[str, Any], key: str, path: str) -> list[Any]:
        value = parent.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.problems.append(f'{path}{key} must be a list')
            return []
        return value
