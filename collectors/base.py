"""The collector protocol and the checkpointed, quarantining JSON Lines reader they share.

Each batch of lines is written in one transaction together with the file's checkpoint, so a
process killed at any point resumes at the last committed line: nothing lost, nothing doubled.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from collectors.contracts import ContractViolation, _Record, validate_line
from store.bulk import insert_ignoring_conflicts, upsert
from store.models import IngestCheckpoint, Quarantine, table_of, utcnow

logger = logging.getLogger(__name__)

UTF8_BOM = b"\xef\xbb\xbf"
BATCH_LINES = 5000
_ENCOUNTER_FIELD = re.compile(rb'("encounter_id"\s*:\s*)"(?:[^"\\]|\\.)*"')


class FileUnreadable(Exception):
    """The whole file cannot be ingested; nothing of it was written."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass
class IngestResult:
    """What one ingest of one file did."""

    path: Path
    kind: str
    lines: int = 0
    inserted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    resumed_at_line: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def count_reason(self, reason: str) -> None:
        self.quarantined += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


R = TypeVar("R", bound=_Record)


@dataclass(frozen=True)
class Located(Generic[R]):
    """A validated record and where it came from."""

    line: int
    record: R


class RecordSink(Protocol[R]):
    """Writes one source kind's validated records; returns the records it refused."""

    kind: str
    contract: type[R]

    def write(
        self, conn: Connection, batch: list[Located[R]], result: IngestResult
    ) -> list[tuple[int, ContractViolation]]: ...


def redact_identifiers(raw: bytes, limit: int = 500) -> str:
    """The raw line as it may be kept in quarantine: no encounter id, bounded length."""
    cleaned = _ENCOUNTER_FIELD.sub(rb'\1"<redacted>"', raw[: limit * 4])
    return cleaned.decode("utf-8", errors="replace")[:limit]


def _iter_lines(handle: Iterator[bytes], first_line: int) -> Iterator[tuple[int, bytes, bytes]]:
    """(line number, line without its newline, the raw bytes) for every line."""
    number = first_line
    for raw in handle:
        number += 1
        yield number, raw.rstrip(b"\r\n"), raw


def ingest_jsonl(
    engine: Engine,
    path: Path,
    sink: RecordSink[R],
    *,
    now: Callable[[], datetime] = utcnow,
    batch_lines: int = BATCH_LINES,
) -> IngestResult:
    """Ingest one JSON Lines file through `sink`, resuming from its checkpoint."""
    path = Path(path)
    result = IngestResult(path=path, kind=sink.kind)
    key = str(path.resolve())
    try:
        size = path.stat().st_size
        handle = path.open("rb")
    except OSError as exc:
        raise FileUnreadable(path, f"cannot open: {exc.strerror or exc}") from exc
    with handle:
        if size == 0:
            raise FileUnreadable(path, "file is empty")
        checkpoint = _load_checkpoint(engine, key)
        hasher = hashlib.sha256()
        offset, line_no = 0, 0
        if checkpoint is not None and 0 < checkpoint.offset <= size:
            prefix = handle.read(checkpoint.offset)
            if hashlib.sha256(prefix).hexdigest() == checkpoint.content_hash:
                hasher.update(prefix)
                offset, line_no = checkpoint.offset, checkpoint.lines
                result.resumed_at_line = line_no
            else:
                logger.warning(
                    "%s changed since its checkpoint; reading it again from the start", path
                )
                handle.seek(0)
        if offset == size and checkpoint is not None and checkpoint.complete:
            return result
        if offset == 0:
            # A UTF-8 byte-order mark is tolerated: some Windows exporters always write one.
            head = handle.read(3)
            if head != UTF8_BOM:
                handle.seek(0)
            else:
                hasher.update(head)
                offset = 3
        batch: list[Located[R]] = []
        refused: list[tuple[int, ContractViolation, bytes]] = []
        batch_end = offset
        clock = now()
        resume_line = line_no
        for line_no, line, raw in _iter_lines(handle, first_line=resume_line):
            batch_end += len(raw)
            hasher.update(raw)
            result.lines += 1
            if not line.strip():
                refused.append((line_no, ContractViolation("empty_line", "blank line"), line))
            else:
                parsed = validate_line(sink.contract, line, now=clock)
                if isinstance(parsed, ContractViolation):
                    if parsed.reason == "invalid_json" and not raw.endswith(b"\n"):
                        parsed = ContractViolation("truncated_line", "last line ends mid-record")
                    refused.append((line_no, parsed, line))
                else:
                    batch.append(Located(line_no, parsed))
            if len(batch) + len(refused) >= batch_lines:
                _commit_batch(
                    engine,
                    path,
                    key,
                    sink,
                    batch,
                    refused,
                    result,
                    hasher.hexdigest(),
                    batch_end,
                    line_no,
                    size,
                    complete=False,
                )
                batch, refused = [], []
                clock = now()
        _commit_batch(
            engine,
            path,
            key,
            sink,
            batch,
            refused,
            result,
            hasher.hexdigest(),
            batch_end,
            line_no,
            size,
            complete=True,
        )
    logger.info(
        "%s: %d lines, %d inserted, %d duplicates, %d quarantined",
        path.name,
        result.lines,
        result.inserted,
        result.duplicates,
        result.quarantined,
    )
    return result


def _commit_batch(
    engine: Engine,
    path: Path,
    key: str,
    sink: RecordSink[R],
    batch: list[Located[R]],
    refused: list[tuple[int, ContractViolation, bytes]],
    result: IngestResult,
    prefix_hash: str,
    end: int,
    lines: int,
    size: int,
    *,
    complete: bool,
) -> None:
    """Write a batch, its quarantined rows and the new checkpoint in one transaction."""
    with engine.begin() as conn:
        rejected = sink.write(conn, batch, result)
        quarantine_rows = []
        for line_no, violation, raw in refused:
            quarantine_rows.append(_quarantine_row(sink.kind, path, line_no, violation, raw))
        for line_no, violation in rejected:
            quarantine_rows.append(_quarantine_row(sink.kind, path, line_no, violation, b""))
        for row in quarantine_rows:
            result.count_reason(str(row["reason"]))
        insert_ignoring_conflicts(conn, table_of(Quarantine), quarantine_rows)
        upsert(
            conn,
            table_of(IngestCheckpoint),
            [
                {
                    "path": key,
                    "size": size,
                    "content_hash": prefix_hash,
                    "offset": end,
                    "lines": lines,
                    "complete": complete,
                    "updated_at": utcnow(),
                }
            ],
            key=["path"],
            update=["size", "content_hash", "offset", "lines", "complete", "updated_at"],
        )


def _quarantine_row(
    kind: str, path: Path, line_no: int, violation: ContractViolation, raw: bytes
) -> dict[str, object]:
    return {
        "source_kind": kind,
        "source_file": str(path),
        "location": f"line {line_no}",
        "reason": violation.reason,
        "detail": violation.detail[:1000],
        "raw": redact_identifiers(raw),
        "quarantined_at": utcnow(),
    }


def _load_checkpoint(engine: Engine, key: str) -> IngestCheckpoint | None:
    table = table_of(IngestCheckpoint)
    with engine.connect() as conn:
        row = conn.execute(sa.select(table).where(table.c.path == key)).mappings().first()
    return IngestCheckpoint.model_validate(dict(row)) if row else None
