"""Source formats: JSON Lines, CSV and Parquet, each split into units with exact positions.

Text formats checkpoint a byte offset at a unit boundary and the sha256 of the bytes before
it; Parquet checkpoints a row index and the sha256 of the whole file (a Parquet file is
written once, never appended to). All of them raise `FileUnreadable` from `check` when the
file cannot be read at all, before the engine writes anything.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import MISSING, fields
from pathlib import Path
from typing import IO, Any, Generic, TypeVar, cast

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from collectors.base import Chunk, FileUnreadable, Position, resume_text
from collectors.contracts import (
    MAX_LINE_BYTES,
    ContractViolation,
    PredictionRecord,
    adapter,
    validate_json,
    validate_python,
)
from collectors.prediction_lines import PredictionLines
from store.models import IngestCheckpoint

R = TypeVar("R")

UTF8_BOM = codecs.BOM_UTF8
BLOCK_BYTES = 1 << 22
RAW_LIMIT = 500  # characters of a refused unit kept in quarantine
REDACTED = "<redacted>"
INPUT_PREFIX = "inputs."
_SNIFF_BYTES = 64 * 1024
# "key": value, where the value may be cut off by the end of a truncated line
_PAIR = re.compile(r'("((?:[^"\\]|\\.)*)"\s*:\s*)("(?:[^"\\]|\\.)*(?:"|$)|[^,}\]\s]+)')
_STRING = re.compile(r'"(?:[^"\\]|\\.)*(?:"|$)')


def sniff_text(path: Path, handle: IO[bytes]) -> None:
    """Refuse files that are not UTF-8 text at all: compressed, UTF-16/32, binary."""
    handle.seek(0)
    head = handle.read(_SNIFF_BYTES)
    handle.seek(0)
    if head.startswith(b"\x1f\x8b"):
        raise FileUnreadable(path, "file is gzip-compressed; decompress it first")
    if head.startswith(b"PK\x03\x04"):
        raise FileUnreadable(path, "file is a zip archive; extract it first")
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise FileUnreadable(path, "file is UTF-32 encoded; Vigil reads UTF-8")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise FileUnreadable(path, "file is UTF-16 encoded; Vigil reads UTF-8")
    if b"\x00" in head:
        raise FileUnreadable(path, "file has NUL bytes: binary or UTF-16 without a BOM")


def required_fields(contract: type[Any]) -> list[str]:
    """The contract's fields that have no default."""
    return [
        f.name for f in fields(contract) if f.default is MISSING and f.default_factory is MISSING
    ]


def shown_fields(contract: type[Any]) -> frozenset[str]:
    """The fields whose values quarantine may keep: the contract's, but the encounter id.
    Any other key (a renamed `encounterId`, a stray `mrn`) keeps its name, not its value."""
    return frozenset(f.name for f in fields(contract)) - {"encounter_id"}


def redact_row(row: dict[str, Any], shown: frozenset[str]) -> str:
    """A row (CSV, Parquet, parsed JSON) as it may be kept in quarantine."""
    kept = {
        k: (v if k in shown or k.startswith(INPUT_PREFIX) else REDACTED) for k, v in row.items()
    }
    return json.dumps(kept, default=str, ensure_ascii=False)[:RAW_LIMIT]


def redact_json_line(raw: bytes, shown: frozenset[str]) -> str:
    """A JSON line as it may be kept in quarantine: values of the `shown` fields only."""
    text = raw[: RAW_LIMIT * 8].decode("utf-8", errors="replace")
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict):
        return redact_row(document, shown)
    if document is not None:  # valid JSON, but not an object: keep no strings
        return _STRING.sub(f'"{REDACTED}"', text)[:RAW_LIMIT]

    def pair(match: re.Match[str]) -> str:
        return match.group(0) if match.group(2) in shown else f'{match.group(1)}"{REDACTED}"'

    return _PAIR.sub(pair, text)[:RAW_LIMIT]


class Tail(bytes):
    """The file's last line when it has no newline: a writer may have stopped mid-record."""


class TextLines:
    """Newline-delimited text: units are lines; positions are byte offsets of line starts.

    Lines are cut from large blocks in C (`bytes.split`); a line longer than the limit is
    skipped as it streams by, never held in memory. A UTF-8 byte-order mark is tolerated.
    """

    unit = "line"
    cheap_framing = True

    def __init__(self) -> None:
        self._hasher: Any = hashlib.sha256()

    def check(self, path: Path, handle: IO[bytes], size: int) -> None:
        sniff_text(path, handle)

    def resume(
        self, handle: IO[bytes], checkpoint: IngestCheckpoint | None, size: int
    ) -> tuple[Position, bool]:
        start, complete, self._hasher = resume_text(handle, checkpoint, size)
        return start, complete

    def chunks(self, handle: IO[bytes], start: Position, batch_units: int) -> Iterator[Chunk]:
        size = _file_size(handle)
        hasher = self._hasher
        offset, number = start.offset, start.units
        handle.seek(offset)
        if offset == 0:
            head = handle.read(len(UTF8_BOM))
            if head == UTF8_BOM:
                hasher.update(head)
                offset = len(head)
            else:
                handle.seek(0)
        pending: list[Any] = []
        first = number + 1
        carry = b""
        skipping = 0  # bytes of an over-long line skipped so far (0: not skipping)

        def emit(last: bool) -> Chunk:
            nonlocal pending, first
            chunk = Chunk(
                first=first,
                payloads=pending,
                end=Position(offset, number, hasher.hexdigest()),
                end_byte=offset,
                size=size,
                last=last,
            )
            first += len(pending)
            pending = []
            return chunk

        while block := handle.read(BLOCK_BYTES):
            if skipping:
                newline = block.find(b"\n")
                if newline < 0:
                    hasher.update(block)
                    skipping += len(block)
                    offset += len(block)
                    continue
                hasher.update(block[: newline + 1])
                offset += newline + 1
                number += 1
                pending.append(_too_long(skipping + newline))
                skipping = 0
                block = block[newline + 1 :]
            data = carry + block if carry else block
            parts = data.split(b"\n")
            carry = parts.pop()
            cut = 0
            taken = 0
            while taken < len(parts):
                take = parts[taken : taken + max(batch_units - len(pending), 1)]
                length = sum(map(len, take)) + len(take)
                hasher.update(data[cut : cut + length])
                cut += length
                offset += length
                number += len(take)
                taken += len(take)
                pending.extend(take)
                if len(pending) >= batch_units:
                    yield emit(last=False)
            if len(carry) > MAX_LINE_BYTES:
                hasher.update(carry)
                offset += len(carry)
                skipping, carry = len(carry), b""
        if skipping:
            number += 1
            pending.append(_too_long(skipping))
        elif carry:
            hasher.update(carry)
            offset += len(carry)
            number += 1
            pending.append(Tail(carry))
        yield emit(last=True)


def _too_long(length: int) -> ContractViolation:
    return ContractViolation("line_too_long", f"{length} bytes > {MAX_LINE_BYTES}")


def _file_size(handle: IO[bytes]) -> int:
    return os.fstat(handle.fileno()).st_size


class JsonLines(TextLines, Generic[R]):
    """JSON Lines: one record per line, each validated against `contract` from its bytes."""

    def __init__(self, contract: type[R]) -> None:
        super().__init__()
        self.contract = contract
        self._validate = adapter(contract).validate_json
        # Prediction logs are the bulk of the input: their common lines take the fast lane.
        self._lane = PredictionLines() if contract is PredictionRecord else None

    def decode(self, payload: bytes, context: dict[str, Any]) -> R | ContractViolation:
        if len(payload) <= MAX_LINE_BYTES:
            if self._lane is not None:
                values = self._lane(payload, context.get("latest"))
                if values is not None:  # the record's attributes, and its store texts
                    return cast(R, values)
            try:  # the common case first: a good line, validated straight from its bytes
                return self._validate(payload, context=context)
            except ValidationError:
                pass
        if not payload or payload.isspace():
            return ContractViolation("empty_line", "blank line")
        parsed = validate_json(self.contract, payload, context)
        if (
            type(parsed) is ContractViolation
            and parsed.reason == "invalid_json"
            and type(payload) is Tail
        ):
            return ContractViolation("truncated_line", "the last line ends mid-record")
        return parsed

    def redact(self, payload: bytes) -> str:
        return redact_json_line(payload, shown_fields(self.contract))


class CsvRecords(Generic[R]):
    """CSV with a header row (comma-separated, RFC 4180 quoting, UTF-8).

    Columns are the contract's field names; `inputs.<name>` columns make the `inputs` map.
    An empty cell is an absent value. Units are records, numbered by the line they start on.
    """

    unit = "line"
    cheap_framing = False

    def __init__(self, contract: type[R]) -> None:
        self.contract = contract
        self.columns: list[str] = []
        self._hasher: Any = hashlib.sha256()

    def check(self, path: Path, handle: IO[bytes], size: int) -> None:
        sniff_text(path, handle)
        handle.seek(0)
        line = handle.readline(MAX_LINE_BYTES + 1)
        handle.seek(0)
        try:
            text = line.removeprefix(UTF8_BOM).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FileUnreadable(path, "the CSV header is not UTF-8") from exc
        header = next(csv.reader([text]), [])
        columns = [c.strip() for c in header]
        if not any(columns):
            raise FileUnreadable(path, "the first line is not a CSV header")
        duplicated = sorted({c for c in columns if columns.count(c) > 1})
        if duplicated:
            raise FileUnreadable(path, f"the CSV header repeats column(s) {', '.join(duplicated)}")
        missing = [c for c in required_fields(self.contract) if c not in columns]
        if missing:
            raise FileUnreadable(
                path, f"the CSV header lacks required column(s) {', '.join(missing)}"
            )
        self.columns = columns

    def resume(
        self, handle: IO[bytes], checkpoint: IngestCheckpoint | None, size: int
    ) -> tuple[Position, bool]:
        start, complete, self._hasher = resume_text(handle, checkpoint, size)
        return start, complete

    def chunks(self, handle: IO[bytes], start: Position, batch_units: int) -> Iterator[Chunk]:
        size = _file_size(handle)
        lines = _CountedLines(handle, start, self._hasher)
        reader = csv.reader(lines, strict=True)
        if start.offset == 0:
            next(reader, None)  # the header, read by `check`
        payloads: list[Any] = []
        numbers: list[int] = []
        width = len(self.columns)
        while True:
            lines.record_start()
            try:
                cells = next(reader, None)
            except csv.Error as exc:
                cells = None
                payloads.append(ContractViolation("invalid_csv", str(exc)))
                numbers.append(lines.first_line)
            if cells is not None:
                numbers.append(lines.first_line)
                if lines.fault is not None:
                    payloads.append(lines.fault)
                elif len(cells) > width:
                    detail = f"{len(cells)} cells for {width} columns"
                    payloads.append(ContractViolation("wrong_column_count", detail))
                elif not any(c.strip() for c in cells):
                    payloads.append(ContractViolation("empty_line", "blank record"))
                else:
                    payloads.append(dict(zip(self.columns, cells, strict=False)))
            elif not lines.more:
                break
            if len(payloads) >= batch_units:
                yield self._chunk(payloads, numbers, lines, size, last=False)
                payloads, numbers = [], []
        yield self._chunk(payloads, numbers, lines, size, last=True)

    @staticmethod
    def _chunk(
        payloads: list[Any], numbers: list[int], lines: _CountedLines, size: int, *, last: bool
    ) -> Chunk:
        return Chunk(
            first=numbers[0] if numbers else lines.line + 1,
            payloads=payloads,
            numbers=numbers,
            end=Position(lines.offset, lines.line, lines.hasher.hexdigest()),
            end_byte=lines.offset,
            size=size,
            last=last,
        )

    def decode(self, payload: dict[str, str], context: dict[str, Any]) -> R | ContractViolation:
        return validate_python(self.contract, cells_to_values(payload), context)

    def redact(self, payload: dict[str, Any]) -> str:
        return redact_row(payload, shown_fields(self.contract))


def cells_to_values(row: dict[str, Any]) -> dict[str, Any]:
    """Row cells as contract values: empty cells absent, `inputs.<name>` cells into `inputs`."""
    values: dict[str, Any] = {}
    inputs: dict[str, Any] = {}
    for column, cell in row.items():
        if column.startswith(INPUT_PREFIX):
            empty = cell is None or (isinstance(cell, str) and not cell.strip())
            inputs[column[len(INPUT_PREFIX) :]] = None if empty else cell
        elif cell is not None and not (isinstance(cell, str) and not cell.strip()):
            values[column] = cell
    if inputs:
        values["inputs"] = inputs
    return values


class _CountedLines:
    """Decoded lines for `csv.reader`, counting bytes and lines and hashing what it hands out.

    `csv.reader` pulls lines only as a record needs them, so after each record the count is
    exactly that record's end: a checkpoint never falls inside a quoted multi-line cell.
    """

    def __init__(self, handle: IO[bytes], start: Position, hasher: Any) -> None:
        self.handle = handle
        self.hasher = hasher
        self.offset = start.offset
        self.line = start.units
        self.more = True
        self.first_line = 0
        self.fault: ContractViolation | None = None
        handle.seek(start.offset)

    def record_start(self) -> None:
        self.first_line = self.line + 1
        self.fault = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        raw = self.handle.readline(MAX_LINE_BYTES + 1)
        if not raw:
            self.more = False
            raise StopIteration
        self.hasher.update(raw)
        length = len(raw)
        if length > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while (more := self.handle.readline(BLOCK_BYTES)) and not more.endswith(b"\n"):
                self.hasher.update(more)
                length += len(more)
            self.hasher.update(more)
            length += len(more)
            self.fault = self.fault or _too_long(length)
            raw = b"\n"
        self.offset += length
        self.line += 1
        if self.offset == length and raw.startswith(UTF8_BOM):
            raw = raw[len(UTF8_BOM) :]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            detail = f"not UTF-8: {exc.reason} at byte {exc.start} of line {self.line}"
            self.fault = self.fault or ContractViolation("invalid_encoding", detail)
            return raw.decode("utf-8", errors="replace")


class ParquetRows(Generic[R]):
    """Parquet: units are rows; the checkpoint is the row index (whole row groups are read
    in slices of the batch size). Columns as for CSV; `inputs` may be a struct or map column."""

    unit = "row"
    cheap_framing = False

    def __init__(self, contract: type[R]) -> None:
        self.contract = contract
        self._file: pq.ParquetFile | None = None
        self._digest = ""

    def check(self, path: Path, handle: IO[bytes], size: int) -> None:
        hasher = hashlib.sha256()
        handle.seek(0)
        while block := handle.read(BLOCK_BYTES):
            hasher.update(block)
        self._digest = hasher.hexdigest()
        handle.seek(0)
        try:
            parquet = pq.ParquetFile(handle)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise FileUnreadable(path, f"not a readable Parquet file: {exc}") from exc
        names = parquet.schema_arrow.names
        missing = [c for c in required_fields(self.contract) if c not in names]
        if missing:
            raise FileUnreadable(
                path, f"the Parquet schema lacks required column(s) {', '.join(missing)}"
            )
        self._file = parquet

    def resume(
        self, handle: IO[bytes], checkpoint: IngestCheckpoint | None, size: int
    ) -> tuple[Position, bool]:
        assert self._file is not None
        rows = self._file.metadata.num_rows
        if checkpoint is not None and checkpoint.content_hash == self._digest:
            start = Position(checkpoint.offset, checkpoint.lines, self._digest)
            return start, checkpoint.complete and checkpoint.offset >= rows
        return Position(0, 0, self._digest), False

    def chunks(self, handle: IO[bytes], start: Position, batch_units: int) -> Iterator[Chunk]:
        parquet = pq.ParquetFile(handle)  # on this handle: a helper process reads its own
        size = _file_size(handle)
        total = parquet.metadata.num_rows
        row = 0
        groups: list[int] = []
        skip = 0
        for index in range(parquet.num_row_groups):
            rows_in_group = parquet.metadata.row_group(index).num_rows
            if row + rows_in_group > start.offset:
                if not groups:
                    skip = start.offset - row
                groups.append(index)
            row += rows_in_group
        done = start.offset

        def chunk(payloads: list[Any], last: bool) -> Chunk:
            return Chunk(
                first=done - len(payloads) + 1,
                payloads=payloads,
                end=Position(done, done, self._digest),
                end_byte=size if total == 0 else size * done // total,
                size=size,
                last=last,
            )

        if groups:
            for record_batch in _record_batches(parquet, groups, batch_units):
                if skip >= record_batch.num_rows:
                    skip -= record_batch.num_rows
                    continue
                if skip:
                    record_batch = record_batch.slice(skip)
                    skip = 0
                payloads = record_batch.to_pylist()
                done += len(payloads)
                yield chunk(payloads, last=done >= total)
                if done >= total:
                    return
        yield chunk([], last=True)

    def decode(self, payload: dict[str, Any], context: dict[str, Any]) -> R | ContractViolation:
        return validate_python(self.contract, _row_values(payload), context)

    def redact(self, payload: dict[str, Any]) -> str:
        return redact_row(payload, shown_fields(self.contract))


def _record_batches(
    parquet: pq.ParquetFile, groups: list[int], batch_units: int
) -> Iterator[pa.RecordBatch]:
    """The row groups' rows in batches; a group that cannot be decoded is an I/O error."""
    batches = parquet.iter_batches(batch_size=batch_units, row_groups=groups)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except pa.ArrowException as exc:
            raise OSError(f"a Parquet row group cannot be decoded: {exc}") from exc
        yield batch


def _row_values(row: dict[str, Any]) -> dict[str, Any]:
    values = cells_to_values(row)
    inputs = values.get("inputs")
    if isinstance(inputs, list):  # a Parquet map column arrives as (key, value) pairs
        values["inputs"] = dict(inputs)
    return values
