"""Sources and sinks: read rows from CSV/TSV/JSONL/Parquet/SQLite, write outputs back."""

from __future__ import annotations

from corral.io.base import (
    COLUMN_TYPES,
    FORMATS,
    Column,
    Sink,
    Source,
    SourceRow,
    open_quarantine_sink,
    open_side_sink,
    open_sink,
    open_source,
    quarantine_spec,
    read_table,
    side_spec,
)
from corral.io.spec import SinkSpec, SourceSpec, format_from_path

__all__ = [
    "COLUMN_TYPES",
    "FORMATS",
    "Column",
    "Sink",
    "SinkSpec",
    "Source",
    "SourceRow",
    "SourceSpec",
    "format_from_path",
    "open_quarantine_sink",
    "open_side_sink",
    "open_sink",
    "open_source",
    "quarantine_spec",
    "read_table",
    "side_spec",
]
