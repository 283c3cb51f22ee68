"""Typed results as JSON values: one conversion for every report the project writes."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any


def jsonable(value: Any) -> Any:
    """Dataclasses, tuples and paths as JSON values; NaN and infinity (no such thing in JSON) as null.

    A dataclass with a `passed` property (a verification report) keeps its verdict too.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if "passed" not in data and hasattr(value, "passed"):
            data["passed"] = getattr(value, "passed")  # noqa: B009 - a property, not a field
        return data
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
