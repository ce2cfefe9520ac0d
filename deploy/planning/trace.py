"""Workload shape from an AIPerf-readable trace (``mooncake_trace`` JSONL: ``input_length`` and
``output_length`` per request, as AIPerf's ``--custom-dataset-type mooncake_trace`` reads).

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "t.jsonl")
    >>> rows = ['{"input_length": 1000, "output_length": 100}',
    ...         '{"input_length": 3000, "output_length": 300}']
    >>> _ = open(path, "w").write("\\n".join(rows))
    >>> trace_shape(path)
    (2000, 200)
"""

from __future__ import annotations

from typing import Any

from deploy.errors import InputError
from deploy.schema import parse_json, read_text, validate

LINE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["input_length", "output_length"],
    "properties": {
        "input_length": {"type": "integer", "minimum": 1},
        "output_length": {"type": "integer", "minimum": 1},
    },
}


def trace_shape(path: str) -> tuple[int, int]:
    """Mean input and output lengths of the trace's requests (rounded), each line checked by LINE_SCHEMA."""
    rows = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            row = parse_json(line, f"{path}:{n}")
            rows.append(validate(row, LINE_SCHEMA, f"{path}:{n} (mooncake_trace line)"))
    if not rows:
        raise InputError(f"{path}: the trace has no request")
    isl = sum(r["input_length"] for r in rows) / len(rows)
    osl = sum(r["output_length"] for r in rows) / len(rows)
    return round(isl), max(1, round(osl))


__all__ = ["trace_shape"]
