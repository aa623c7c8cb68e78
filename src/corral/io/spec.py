"""Source and sink specs as they appear in a job file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from corral._registry import SINK_GROUP, SOURCE_GROUP, plugin_names, suggest
from corral.store._url import is_url


def _registered(group: str, where: str) -> AfterValidator:
    """The validator of a ``format:`` key: a name registered under the entry-point ``group``."""

    def check(value: str) -> str:
        names = plugin_names(group)
        if value not in names:
            raise ValueError(
                f"unknown {where} format `{value}`{suggest(value, names) or '.'} Formats: "
                f"{', '.join(names)}."
            )
        return value

    return AfterValidator(check)


#: a format a source can be read in: a name under the ``corral.sources`` entry-point group
SourceFormat = Annotated[str, _registered(SOURCE_GROUP, "source")]
#: a format a sink can be written in: a name under the ``corral.sinks`` entry-point group
SinkFormat = Annotated[str, _registered(SINK_GROUP, "sink")]

_EXT_FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".db": "sqlite",
    ".sqlite": "sqlite",
    ".sqlite3": "sqlite",
    ".duckdb": "duckdb",
    ".ddb": "duckdb",
}


def format_from_path(path: str) -> str | None:
    """The format implied by a file name's extension (or a ``postgresql://`` URL), or None."""
    if is_url(path):  # a database (corral.io.postgres), not a file
        return "postgres"
    return _EXT_FORMATS.get(Path(path).suffix.lower())


class SourceSpec(BaseModel):
    """Where the rows come from. A plain string in a job file is the ``path``."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="file path, relative to the job file's folder")
    format: SourceFormat | None = Field(default=None, description="inferred from the extension if omitted")
    delimiter: str | None = Field(default=None, description="CSV field delimiter (default ',' or tab for .tsv)")
    encoding: str = Field(default="utf-8", description="text encoding of CSV/TSV/JSONL files")
    table: str | None = Field(default=None, description="table name, for a SQLite, DuckDB or Postgres source")
    query: str | None = Field(default=None, description="a SELECT statement whose rows are the source (DuckDB, Postgres)")

    @model_serializer(mode="wrap")
    def _identity(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        """Keys added after jobs already had run ids are left out at their defaults, so a job
        that does not use them keeps its run id (the spec is part of it)."""
        out = handler(self)
        if isinstance(out, dict) and out.get("query") is None:
            out.pop("query", None)
        return out


class SinkSpec(BaseModel):
    """Where the outputs go. A plain string in a job file is the ``path``."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="file path, relative to the job file's folder")
    format: SinkFormat | None = Field(default=None, description="inferred from the extension if omitted")
    table: str | None = Field(default=None, description="table name, for a SQLite, DuckDB or Postgres sink")
    delimiter: str | None = Field(default=None, description="CSV field delimiter")
    quarantine: str | None = Field(
        default=None,
        description="where quarantined rows go (default: NAME.quarantine.EXT beside the sink, "
        "or table NAME_quarantine for SQLite)",
    )
    skipped: str | None = Field(
        default=None,
        description="where rows a filter step skipped go (default: NAME.skipped.EXT beside the "
        "sink, or table NAME_skipped for SQLite)",
    )
    review: str | None = Field(
        default=None,
        description="where rows held for review go (default: NAME.review.EXT beside the sink, "
        "or table NAME_review for SQLite)",
    )
