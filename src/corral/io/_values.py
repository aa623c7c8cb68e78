"""Row values as JSON values and as text cells, the two shapes sinks write them in."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
from typing import Any


def to_json_value(v: Any) -> Any:
    """``v`` as a value ``json.dumps`` accepts: dates -> ISO text, decimals -> str, bytes ->
    base64, NaN -> None, tuples -> lists, dict keys -> str."""
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        return None if math.isnan(v) else v
    if isinstance(v, (dt.date, dt.time)):  # datetime is a date
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode("ascii")
    if isinstance(v, dict):
        return {str(k): to_json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [to_json_value(x) for x in v]
    return str(v)


def to_text(v: Any) -> str:
    """``v`` as one text cell: strings as they are, ``None`` as empty, booleans as
    ``true``/``false``, lists and dicts as JSON text."""
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float, decimal.Decimal)):
        return str(v)
    if isinstance(v, (dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode("ascii")
    if isinstance(v, (dict, list, tuple, set, frozenset)):
        return json.dumps(to_json_value(v), ensure_ascii=False)
    return str(v)


def json_type(v: Any) -> str:
    """The JSON Schema type of a JSON value (``integer`` for an int, ``null`` for None)."""
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object" if isinstance(v, dict) else "null"
