"""Ingest: the source's rows into the store, keyed and resumable, before any record is asked.

Rows go in chunks of :data:`INGEST_CHUNK`; the run remembers how many rows it has loaded, so an
interrupted load goes on from there. A row keeps its ``key:`` column's value, or a content hash
of the row (with ``~2``, ``~3``… for repeated rows). A row that cannot be read, or has an empty
key, is loaded already quarantined, with the reason: every input row ends in a visible state.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import Any

import orjson

from corral._commit import dumps
from corral.errors import SourceError, UserError
from corral.io import Source, SourceRow
from corral.job import Job
from corral.store.base import DuplicateKeyError, NewRecord, RunInfo, Store

#: rows loaded per store transaction (and between two looks at a stop)
INGEST_CHUNK = 5000

Progress = Callable[[dict[str, Any]], None]


def ingest(
    store: Store, run: RunInfo, job: Job, source: Source, limit: int | None,
    progress: Progress | None, stop: asyncio.Event | None = None,
) -> RunInfo:
    """Load the rows the run has not loaded yet (the first ``limit`` only, when given); return
    the run as stored after it. Bad input (a duplicate key, an unreadable source) abandons the
    run and raises the user's error."""
    if run.ingest_done or (limit is not None and run.ingested_rows >= limit):
        return run
    cursor = run.ingested_rows
    occurrences = store.occurrences(run.id) if job.key is None and cursor else {}
    batch: list[NewRecord] = []
    done = True
    try:
        for row in source.rows(start=cursor):
            if limit is not None and row.ordinal >= limit:
                done = False
                break
            batch.append(new_record(row, job.key, occurrences))
            cursor = row.ordinal + 1
            if len(batch) >= INGEST_CHUNK:
                store.ingest(run.id, batch, cursor)
                batch = []
                if progress:
                    progress({"phase": "ingest", "rows": cursor})
                if stop is not None and stop.is_set():
                    done = False
                    break
        if batch:
            store.ingest(run.id, batch, cursor)
    except DuplicateKeyError as e:
        lines = " and ".join(f"line {n}" for n in (e.first_line, e.second_line) if n is not None)
        err = SourceError(
            f"duplicate key `{e.key}` in column `{job.key}` of {source.path.name}"
            + (f" ({lines})" if lines else "")
            + "; keys must be unique: fix the data, or remove `key:` to key rows by content"
        )
        abandon(store, run, str(err))
        raise err from None
    except UserError as e:
        abandon(store, run, str(e))
        raise
    store.update_run(run.id, ingested_rows=max(cursor, run.ingested_rows), ingest_done=done, status="running")
    got = store.get_run(run.id)
    assert got is not None
    return got


def abandon(store: Store, run: RunInfo, reason: str) -> None:
    """Bad input found while loading: forget the run, unless calls were already paid for in it
    (an earlier --limit run), whose costs stay on record under a failed run."""
    if store.has_calls(run.id):
        store.update_run(run.id, status="failed", stop_reason=reason)
    else:
        store.delete_run(run.id)


def new_record(row: SourceRow, key_col: str | None, occurrences: dict[str, int]) -> NewRecord:
    """The stored form of one source row. ``occurrences`` counts content hashes seen so far in
    a key-less job (updated here), so repeated rows get distinct keys."""
    if row.data is None:
        return _quarantined(row, None, f"malformed input: {row.error}")
    data = dumps(row.data)
    if key_col is not None:
        value = row.data.get(key_col)
        if value is None or value == "":
            where = f"line {row.line}" if row.line else f"row {row.ordinal + 1}"
            return _quarantined(row, data, f"empty key in column `{key_col}` ({where})")
        return NewRecord(key=str(value), ordinal=row.ordinal, line=row.line, data=data)
    digest = hashlib.sha256(
        orjson.dumps(row.data, option=orjson.OPT_SORT_KEYS, default=str)
    ).hexdigest()[:16]
    n = occurrences.get(digest, 0) + 1
    occurrences[digest] = n
    key = digest if n == 1 else f"{digest}~{n}"
    return NewRecord(key=key, ordinal=row.ordinal, line=row.line, data=data, content_hash=digest)


def _quarantined(row: SourceRow, data: str | None, reason: str) -> NewRecord:
    """A row that has no key to be asked under: keyed by its line number, quarantined at once."""
    return NewRecord(
        key=f"#{row.ordinal + 1}", ordinal=row.ordinal, line=row.line, data=data,
        state="quarantined", reason=reason,
    )


_SECRET = ("key", "token", "secret", "password")
#: what a run adds to the job it keeps: the model's id and the folder the job's paths are
#: relative to (the job file's), so the job can be built again from the store (``corral review``)
RUN_KEYS = ("model_id", "job_dir")


def job_spec(run: RunInfo) -> dict[str, Any]:
    """The job a run keeps, as a job mapping (less what :data:`RUN_KEYS` names)."""
    return {k: v for k, v in run.spec.items() if k not in RUN_KEYS}


def new_run(job: Job, run_id: str, model_id: str, fingerprint: str) -> RunInfo:
    """The run as it is created in the store, before any row is loaded. The job is kept with it,
    less the model options that look like credentials, with the model's id and the job's folder
    (:data:`RUN_KEYS`)."""
    spec = job.model_dump(mode="json")

    def clean(ref: dict[str, Any]) -> dict[str, Any]:
        return {k: ("<redacted>" if any(w in k.lower() for w in _SECRET) else v) for k, v in ref.items()}

    models = {name: clean(ref or {}) for name, ref in (spec.get("models") or {}).items()}
    spec = {**spec, "model": clean(spec.get("model") or {}), "models": models, "model_id": model_id,
            "job_dir": str(job.base_dir)}
    now = time.time()
    return RunInfo(
        id=run_id, job_name=job.name, spec_hash=job.spec_hash(), fingerprint=fingerprint,
        spec=spec, status="created", stop_reason=None, created_at=now, updated_at=now,
        ingested_rows=0, ingest_done=False, tags=job.tags,
    )
