"""The one ingest engine every source format shares: checkpointed, quarantining, batched.

A source format splits a file into units (lines, CSV records, Parquet rows, HL7 messages) and
hands them over in chunks, each with the position after it. The engine decodes every unit
against its contract, lets the sink write the good records, quarantines the rest with their
reason and location, and commits each chunk in one transaction together with the file's
checkpoint (path, size, content hash, offset). A process killed at any point therefore resumes
at the last committed chunk: nothing lost, nothing doubled. A file that cannot be read at all
raises `FileUnreadable` before anything of it is written.

Decoding and preparing a chunk touch no database (`prepare_chunk`), so for a large file they
run in helper processes one chunk ahead of the transactions.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import IO, Any, Generic, Protocol, TypeVar

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from collectors.bulkload import bulk_load
from collectors.contracts import ContractViolation, validation_context
from store.bulk import insert_ignoring_conflicts, upsert
from store.models import IngestCheckpoint, Quarantine, table_of, utcnow

logger = logging.getLogger(__name__)

BATCH_UNITS = 20_000
CHECKPOINTS = table_of(IngestCheckpoint)
QUARANTINE = table_of(Quarantine)


class FileUnreadable(Exception):
    """The whole file cannot be ingested; nothing of it was written."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem

    def __reduce__(self) -> tuple[Any, ...]:
        return (FileUnreadable, (self.path, self.problem))


@dataclass
class IngestResult:
    """What one ingest of one file did."""

    path: Path
    kind: str
    lines: int = 0  # units read in this run: lines, rows or messages
    inserted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    resumed_at_line: int = 0
    skipped: bool = False  # already ingested completely, unchanged
    reasons: dict[str, int] = field(default_factory=dict)

    def count_reason(self, reason: str) -> None:
        self.quarantined += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


@dataclass(slots=True)
class Position:
    """How far a file has been read: the checkpoint of a chunk boundary."""

    offset: int  # bytes for text formats, rows for Parquet
    units: int  # lines, rows or messages before `offset`
    digest: str  # sha256 of the bytes before `offset` (text) or of the whole file (Parquet)


@dataclass(slots=True)
class Chunk:
    """Consecutive units of a file, not yet decoded, and the position after them.

    A payload is what the format's `decode` takes (a line, a row, a message), or already a
    `ContractViolation` when the framing itself was faulty (an over-long line, say).
    """

    first: int  # number of the first unit, counting from 1
    payloads: list[Any]
    end: Position
    end_byte: int  # bytes of the file covered so far (an estimate for Parquet), for progress
    size: int  # the file's size in bytes
    last: bool  # the file's last chunk: the checkpoint marks the file complete
    numbers: list[int] | None = None  # each unit's number, when they are not first, first+1, ...
    offsets: list[int] | None = None  # each unit's byte offset, for formats that report it


@dataclass(slots=True)
class Batch(Generic[R]):
    """The records of a chunk that met their contract, with where each came from."""

    records: list[R] = field(default_factory=list)
    units: list[int] = field(default_factory=list)
    payloads: list[Any] = field(default_factory=list)


class SourceFormat(Protocol[R_co]):
    """Splits one kind of file into units and decodes a unit against its contract."""

    unit: str  # "line", "row" or "message": how quarantine locations are written
    cheap_framing: bool  # finding the units costs little next to decoding them

    def check(self, path: Path, handle: IO[bytes], size: int) -> None:
        """Raise FileUnreadable if the file cannot be read at all (nothing is written yet)."""

    def resume(
        self, handle: IO[bytes], checkpoint: IngestCheckpoint | None, size: int
    ) -> tuple[Position, bool]:
        """Where to start (the checkpoint, if the file still matches it) and whether the
        file is already completely ingested."""

    def chunks(self, handle: IO[bytes], start: Position, batch_units: int) -> Iterator[Chunk]:
        """The file's units from `start` on, in chunks of at most `batch_units`."""

    def decode(self, payload: Any, context: dict[str, Any]) -> R_co | ContractViolation:
        """One unit against its contract (`context`: see `validation_context`)."""

    def redact(self, payload: Any) -> str:
        """The unit as it may be kept in quarantine: no identifiers, bounded length."""


@dataclass(slots=True)
class Prepared:
    """A sink's store rows for one batch, built without touching the database."""

    rows: list[Any] = field(default_factory=list)
    origin: list[int] = field(default_factory=list)  # the batch index each row came from
    refused: list[tuple[int, ContractViolation]] = field(default_factory=list)  # by index
    duplicates: int = 0  # identical repeats within the batch
    packed: bytes | None = None  # the rows, while they cross from a helper process


class RecordSink(Protocol[R]):
    """Writes one source kind's validated records, in two steps: `prepare` builds the store
    rows (pure: it may run in a helper process), `apply` writes them in the chunk's
    transaction and returns the batch indexes it refused."""

    kind: str

    def prepare(self, batch: Batch[R]) -> Prepared: ...

    def apply(
        self, conn: Connection, prepared: Prepared, result: IngestResult
    ) -> list[tuple[int, ContractViolation]]: ...


@dataclass(slots=True)
class PreparedChunk:
    """A chunk decoded and prepared: everything its transaction needs."""

    chunk: Chunk  # its payloads are dropped once decoded
    units: int
    prepared: Prepared
    numbers: list[int]  # unit number of each record of the batch
    payloads: list[Any]  # each record's payload (for quarantining what `apply` refuses)
    refused: list[tuple[int, ContractViolation, str]]  # unit number, why, redacted unit


# A file this large is prepared in helper processes while the parent writes (see below), and
# written with the store's bulk-load settings (`bulk_load`).
HELPER_MIN_BYTES = 16 << 20
# With helpers, a transaction's units arrive in this many smaller chunks: the parent starts
# writing after one small chunk is prepared, not a whole transaction's worth.
HELPER_SPLIT = 8
# Prepared chunks a helper may hold ready while the parent is busy (committing, say).
HELPER_AHEAD = 4


def ingest_file(
    engine: Engine,
    path: Path,
    source: SourceFormat[R],
    sink: RecordSink[R],
    *,
    kind: str | None = None,
    now: Callable[[], datetime] = utcnow,
    batch_units: int = BATCH_UNITS,
    progress: Callable[[int], None] | None = None,
    helper: bool | None = None,
    opener: Callable[[Path], IO[bytes]] | None = None,
) -> IngestResult:
    """Ingest one file through `source` and `sink`, resuming from its checkpoint.

    Each transaction holds `batch_units` units (the last fewer) and the checkpoint after them.
    `progress` is called after each commit with the bytes of the file it covered.
    `helper`: decode and prepare the chunks in forked helper processes (two for line-framed
    formats on more than two cores, else one), in chunks of a fraction of a transaction and a
    few chunks ahead of the writing, so validation and writing use two cores (None: for a
    large file, when a core is idle and forking is safe; see `_helper_can_run`). Only this
    process writes, so a crash resumes exactly as without it. `opener` opens the file for
    reading, here and in the helpers (default: a plain `open`; the drop folder's opener
    refuses links).
    """
    path = Path(path)
    opener = opener or _open_for_reading
    kind = kind or sink.kind
    result = IngestResult(path=path, kind=kind)
    key = str(path.resolve())
    try:
        handle = opener(path)
    except OSError as exc:
        raise FileUnreadable(path, f"cannot open: {exc.strerror or exc}") from exc
    with handle:
        size = _size(path, handle)
        if size == 0:
            raise FileUnreadable(path, "file is empty")
        source.check(path, handle, size)
        start, complete = source.resume(handle, _load_checkpoint(engine, key), size)
        if complete:
            result.skipped = True
            return result
        result.resumed_at_line = start.units
        if helper is None:
            helper = size >= HELPER_MIN_BYTES and _helper_can_run()
        prepared: Iterator[PreparedChunk]
        if helper:
            # Two helpers where splitting a file into units is cheap next to validating them, if
            # they have cores of their own: on two cores one helper keeps up with the writing
            # (measured: a second one only adds reading and contention).
            count = 2 if source.cheap_framing and (os.cpu_count() or 1) > 2 else 1
            units = helper_chunk_units(batch_units)
            prepared = _prepared_by_helpers(path, source, sink, start, units, now, count, opener)
        else:
            chunks = source.chunks(handle, start, batch_units)
            prepared = (prepare_chunk(source, sink, chunk, now()) for chunk in chunks)
        done = pending = 0
        with contextlib.ExitStack() as stack:
            conn = stack.enter_context(engine.connect())
            if size >= HELPER_MIN_BYTES:
                stack.enter_context(bulk_load(conn))
            while True:
                try:
                    item = next(prepared, None)
                except OSError as exc:  # the file broke while being read: what was read is kept
                    conn.commit()
                    problem = f"read failed after {result.lines} units: {exc}"
                    raise FileUnreadable(path, problem) from exc
                if item is None:
                    break
                _apply_chunk(conn, path, key, kind, source, sink, item, result)
                pending += item.units
                if pending >= batch_units or item.chunk.last:
                    conn.commit()  # the chunks' rows, quarantine and checkpoint, all or nothing
                    pending = 0
                    if progress is not None:
                        progress(item.chunk.end_byte - done)
                    done = item.chunk.end_byte
            conn.commit()
    logger.info(
        "%s: %d %ss, %d inserted, %d duplicates, %d quarantined",
        path.name,
        result.lines,
        source.unit,
        result.inserted,
        result.duplicates,
        result.quarantined,
    )
    return result


def _open_for_reading(path: Path) -> IO[bytes]:
    return path.open("rb")


def helper_chunk_units(batch_units: int) -> int:
    """Units per chunk a helper prepares: the largest divisor of `batch_units` no more than a
    `HELPER_SPLIT`th of it, so transactions still end where they would in one process."""
    units = max(batch_units // HELPER_SPLIT, 1)
    while batch_units % units:
        units -= 1
    return units


def _helper_can_run() -> bool:
    """A helper process pays only with a core to spare (it adds pickling work), and forking is
    safe only from a process with a single thread."""
    cores = os.cpu_count() or 1
    return (
        cores > 1
        and os.getloadavg()[0] < cores - 0.5  # measured: no gain at a load of 2 on 2 cores
        and threading.active_count() == 1
        and "fork" in multiprocessing.get_all_start_methods()
    )


def _size(path: Path, handle: IO[bytes]) -> int:
    try:
        return os.fstat(handle.fileno()).st_size
    except OSError as exc:  # pragma: no cover - an open file can always be stat'ed on Linux
        raise FileUnreadable(path, f"cannot stat: {exc.strerror or exc}") from exc


def prepare_chunk(
    source: SourceFormat[R], sink: RecordSink[R], chunk: Chunk, now: datetime
) -> PreparedChunk:
    """Decode every unit of a chunk against its contract and prepare the good records."""
    batch: Batch[R] = Batch()
    refused: list[tuple[int, ContractViolation, str]] = []
    decode = source.decode
    context = validation_context(now)
    records, units, payloads = batch.records, batch.units, batch.payloads
    numbers = chunk.numbers or range(chunk.first, chunk.first + len(chunk.payloads))
    for number, payload in zip(numbers, chunk.payloads, strict=True):
        if type(payload) is ContractViolation:
            refused.append((number, payload, ""))
            continue
        parsed = decode(payload, context)
        if type(parsed) is ContractViolation:
            refused.append((number, parsed, source.redact(payload)))
        else:
            records.append(parsed)  # type: ignore[arg-type]
            units.append(number)
            payloads.append(payload)
    prepared = sink.prepare(batch)
    for index, violation in prepared.refused:
        refused.append((units[index], violation, source.redact(payloads[index])))
    prepared.refused = []
    count = len(chunk.payloads)
    chunk.payloads = []
    return PreparedChunk(chunk, count, prepared, units, payloads, refused)


def _prepared_by_helpers(
    path: Path,
    source: SourceFormat[R],
    sink: RecordSink[R],
    start: Position,
    batch_units: int,
    now: Callable[[], datetime],
    count: int,
    opener: Callable[[Path], IO[bytes]] = _open_for_reading,
) -> Iterator[PreparedChunk]:
    """Prepared chunks from `count` forked helper processes, in order.

    Every helper reads the whole file from `start` (its own handle and hash state), and
    decodes and prepares every `count`-th chunk: reading and hashing cost little next to
    validation. A thread of the helper sends the prepared chunks, so preparing goes on while
    the parent is busy, up to `HELPER_AHEAD` chunks ahead; the parent takes them in turn.
    """
    context = multiprocessing.get_context("fork")
    pipes = [context.Pipe(duplex=False) for _ in range(count)]

    def work(mine: int) -> None:
        for index, (receiver, sender) in enumerate(pipes):
            receiver.close()
            if index != mine:
                sender.close()
        outbox = _Outbox(pipes[mine][1])
        try:
            with opener(path) as handle:
                for number, chunk in enumerate(source.chunks(handle, start, batch_units)):
                    if number % count == mine:
                        outbox.put(_packed(prepare_chunk(source, sink, chunk, now())))
            outbox.put(None)
        except _ParentGone:
            pass
        except BaseException as exc:  # handed to the parent, which raises it
            handed = exc if isinstance(exc, FileUnreadable | OSError) else RuntimeError(repr(exc))
            outbox.put(handed)
        finally:
            outbox.close()

    helpers = [
        context.Process(target=work, args=(mine,), name=f"vigil-collect-helper-{mine}", daemon=True)
        for mine in range(count)
    ]
    for helper in helpers:
        helper.start()
    receivers = [receiver for receiver, _ in pipes]
    for _, sender in pipes:
        sender.close()
    try:
        number = 0
        while True:
            try:
                item = receivers[number % count].recv()
            except EOFError:
                raise RuntimeError("a helper process of the collector died") from None
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield _unpacked(item)
            number += 1
    finally:
        for receiver in receivers:
            receiver.close()
        for helper in helpers:
            helper.join(timeout=5)
            if helper.is_alive():
                helper.kill()


class _ParentGone(Exception):
    """The parent stopped reading a helper's chunks."""


class _Outbox:
    """A helper's queue of prepared chunks, sent to the parent by a thread of its own (writing
    to the pipe waits without holding the interpreter), at most `HELPER_AHEAD` waiting."""

    def __init__(self, sender: Any) -> None:
        self._sender = sender
        self._queue: queue.Queue[memoryview | None] = queue.Queue(maxsize=HELPER_AHEAD)
        self._gone = threading.Event()
        self._thread = threading.Thread(target=self._send, name="vigil-helper-send", daemon=True)
        self._thread.start()

    def _send(self) -> None:
        try:
            while (data := self._queue.get()) is not None:
                self._sender.send_bytes(data)
        except OSError:  # a broken pipe: the parent is gone
            self._gone.set()

    def put(self, item: Any) -> None:
        """Queue `item` for the parent (pickled here, as `Connection.send` would)."""
        data = ForkingPickler.dumps(item)
        while not self._gone.is_set():
            try:
                self._queue.put(data, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _ParentGone

    def close(self) -> None:
        """Send what is queued, then close the pipe."""
        if not self._gone.is_set():
            while self._thread.is_alive():
                try:
                    self._queue.put(None, timeout=0.1)
                    break
                except queue.Full:
                    continue
            self._thread.join()
        self._sender.close()


# Tuple rows cross from a helper process as MessagePack, at a fraction of pickle's cost (str,
# int, float, bool and None come back as they went).
_PACK = msgspec.msgpack.Encoder().encode
_UNPACK = msgspec.msgpack.Decoder(list[tuple[Any, ...]]).decode


def _packed(item: PreparedChunk) -> PreparedChunk:
    prepared = item.prepared
    if prepared.rows and type(prepared.rows[0]) is tuple:
        prepared.packed, prepared.rows = _PACK(prepared.rows), []
    return item


def _unpacked(item: PreparedChunk) -> PreparedChunk:
    prepared = item.prepared
    if prepared.packed is not None:
        prepared.rows, prepared.packed = _UNPACK(prepared.packed), None
    return item


def _apply_chunk(
    conn: Connection,
    path: Path,
    key: str,
    kind: str,
    source: SourceFormat[R],
    sink: RecordSink[R],
    item: PreparedChunk,
    result: IngestResult,
) -> None:
    """Write a prepared chunk's rows, its quarantined units and the file's checkpoint in the
    transaction of `conn`."""
    chunk = item.chunk
    result.lines += item.units
    result.duplicates += item.prepared.duplicates
    refused = item.refused
    for index, violation in sink.apply(conn, item.prepared, result):
        refused.append((item.numbers[index], violation, source.redact(item.payloads[index])))
    offsets = None
    if chunk.offsets:
        numbers = chunk.numbers or range(chunk.first, chunk.first + len(chunk.offsets))
        offsets = dict(zip(numbers, chunk.offsets, strict=True))
    rows = []
    for number, violation, raw in refused:
        where = f"{source.unit} {number}"
        if offsets is not None:
            where += f" at byte {offsets[number]}"
        rows.append(_quarantine_row(kind, path, where, violation, raw))
        result.count_reason(violation.reason)
    insert_ignoring_conflicts(conn, QUARANTINE, rows)
    upsert(
        conn,
        CHECKPOINTS,
        [
            {
                "path": key,
                "size": chunk.size,
                "content_hash": chunk.end.digest,
                "offset": chunk.end.offset,
                "lines": chunk.end.units,
                "complete": chunk.last,
                "updated_at": utcnow(),
            }
        ],
        key=["path"],
        update=["size", "content_hash", "offset", "lines", "complete", "updated_at"],
    )


def _quarantine_row(
    kind: str, path: Path, where: str, violation: ContractViolation, raw: str
) -> dict[str, object]:
    return {
        "source_kind": kind,
        "source_file": str(path),
        "location": where[:64],
        "reason": violation.reason,
        "detail": violation.detail[:1000],
        "raw": raw,
        "quarantined_at": utcnow(),
    }


def _load_checkpoint(engine: Engine, key: str) -> IngestCheckpoint | None:
    with engine.connect() as conn:
        row = (
            conn.execute(sa.select(CHECKPOINTS).where(CHECKPOINTS.c.path == key)).mappings().first()
        )
    return IngestCheckpoint.model_validate(dict(row)) if row else None


def resume_text(
    handle: IO[bytes], checkpoint: IngestCheckpoint | None, size: int
) -> tuple[Position, bool, Any]:
    """Resume a byte-oriented file at its checkpoint if the bytes before it are unchanged.

    Returns the start position, whether the file is completely ingested already, and the
    sha256 state after the start (to continue hashing from there).
    """
    hasher = hashlib.sha256()
    if checkpoint is not None and 0 < checkpoint.offset <= size:
        handle.seek(0)
        remaining = checkpoint.offset
        while remaining:
            block = handle.read(min(remaining, 1 << 22))
            if not block:
                break
            hasher.update(block)
            remaining -= len(block)
        if remaining == 0 and hasher.hexdigest() == checkpoint.content_hash:
            start = Position(checkpoint.offset, checkpoint.lines, checkpoint.content_hash)
            return start, checkpoint.complete and checkpoint.offset == size, hasher
        logger.warning(
            "%s changed since its checkpoint; reading it again from the start", handle.name
        )
        hasher = hashlib.sha256()
    handle.seek(0)
    return Position(0, 0, hasher.hexdigest()), False, hasher
