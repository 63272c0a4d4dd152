"""HL7 v2 ADT feeds: MLLP-framed or newline/CR-separated files → feed freshness per site.

Vigil reads ADT messages only for their feed's freshness: the sending facility (MSH-4), the
message time (MSH-7) and the event time (EVN-2). Each message is parsed with the `hl7`
package; nothing of the patient (PID, PV1, ...) is kept, in the store or in quarantine.

Framing: a file whose first byte (after whitespace) is 0x0B is MLLP (`\\x0b message \\x1c\\x0d`);
otherwise segments are separated by CR, LF or CRLF and a message starts at each MSH segment
(FHS/BHS/BTS/FTS batch envelopes are skipped). Units are messages, located by their index
and byte offset; the checkpoint is the offset of the next message.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import hl7

from collectors.base import Chunk, FileUnreadable, Position, resume_text
from collectors.contracts import AdtMessage, ContractViolation, validate_python
from collectors.formats import BLOCK_BYTES, RAW_LIMIT, sniff_text
from store.models import IngestCheckpoint

MLLP_START, MLLP_END = b"\x0b", b"\x1c"
MAX_MESSAGE_BYTES = 4 << 20
ENVELOPE = (b"FHS", b"BHS", b"BTS", b"FTS")
_SEGMENT = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)")
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_DTM = re.compile(r"\d{12}(?:\d{2}(?:\.\d{1,4})?)?(?:[+-]\d{4})?")


@dataclass(frozen=True, slots=True)
class FeedFault:
    """A message from a known sender that broke its contract: an error of that site's feed."""

    site: str
    feed: str
    violation: ContractViolation


@dataclass(slots=True)
class _Unit:
    start: int
    span: bytearray  # every byte of the unit, for the content hash
    segments: list[bytes]  # the payload: the segments without their terminators
    fault: ContractViolation | None = None


class Hl7Messages:
    """An HL7 v2 file split into messages, each decoded to an `AdtMessage` or a fault."""

    unit = "message"
    cheap_framing = False
    feed = "ADT"

    def __init__(self, site_timezones: dict[str, str]) -> None:
        self.site_timezones = site_timezones
        self._hasher: Any = hashlib.sha256()
        self._offset = 0
        self._mllp = False

    def check(self, path: Path, handle: IO[bytes], size: int) -> None:
        sniff_text(path, handle)
        head = handle.read(1024).lstrip(b" \t\r\n")
        handle.seek(0)
        if head.startswith(MLLP_START):
            self._mllp = True
        elif not head.startswith((b"MSH", *ENVELOPE[:2])):
            raise FileUnreadable(
                path,
                "not HL7 v2: the file does not start with an MSH, FHS or BHS segment "
                "or an MLLP block (0x0B)",
            )

    def resume(
        self, handle: IO[bytes], checkpoint: IngestCheckpoint | None, size: int
    ) -> tuple[Position, bool]:
        start, complete, self._hasher = resume_text(handle, checkpoint, size)
        return start, complete

    # ------------------------------------------------------------------ framing

    def chunks(self, handle: IO[bytes], start: Position, batch_units: int) -> Iterator[Chunk]:
        size = os.fstat(handle.fileno()).st_size
        handle.seek(start.offset)
        self._offset = start.offset
        read = self._mllp_units if self._mllp else self._segment_units
        payloads: list[Any] = []
        offsets: list[int] = []
        number = start.units
        for unit in read(handle, start.offset):
            self._consume(unit.span, unit.start)
            number += 1
            payloads.append(unit.fault or unit.segments)
            offsets.append(unit.start)
            if len(payloads) >= batch_units:
                yield self._chunk(payloads, offsets, number, size, last=False)
                payloads, offsets = [], []
        yield self._chunk(payloads, offsets, number, size, last=True)

    def _consume(self, raw: bytes | bytearray, start: int) -> None:
        """Hash bytes in file order; the checkpoint offset is where hashing stopped."""
        self._hasher.update(raw)
        self._offset = start + len(raw)

    def _chunk(
        self, payloads: list[Any], offsets: list[int], number: int, size: int, *, last: bool
    ) -> Chunk:
        return Chunk(
            first=number - len(payloads) + 1,
            payloads=payloads,
            offsets=offsets,
            end=Position(self._offset, number, self._hasher.hexdigest()),
            end_byte=self._offset,
            size=size,
            last=last,
        )

    def _segment_units(self, handle: IO[bytes], offset: int) -> Iterator[_Unit]:
        current: _Unit | None = None
        for start, raw in _segments(handle, offset):
            segment = raw.rstrip(b"\r\n")
            if not segment.strip():  # blank: part of the open unit, else on its own
                if current is not None:
                    current.span += raw
                else:
                    self._consume(raw, start)
                continue
            if segment.startswith((b"MSH", *ENVELOPE)) and current is not None:
                yield current
                current = None
            if segment.startswith(ENVELOPE):  # a batch envelope belongs to no message
                self._consume(raw, start)
                continue
            if current is None:
                current = _Unit(start, bytearray(), [])
                if not segment.startswith(b"MSH"):
                    detail = "segments before any MSH segment"
                    current.fault = ContractViolation("missing_msh", detail)
            current.span += raw
            current.segments.append(segment)
        if current is not None:
            yield current

    def _mllp_units(self, handle: IO[bytes], offset: int) -> Iterator[_Unit]:
        buffer = b""
        base = offset  # file offset of buffer[0]
        eof = False
        while True:
            if not eof:
                block = handle.read(BLOCK_BYTES)
                eof = not block
                buffer += block
            begin = buffer.find(MLLP_START)
            gap = len(buffer) if begin < 0 else begin
            if gap and buffer[:gap].strip():
                if begin < 0 and not eof:
                    continue  # bytes outside a frame: one error up to the next frame
                detail = f"{gap} bytes outside MLLP frames"
                violation = ContractViolation("framing_error", detail)
                yield _Unit(base, bytearray(buffer[:gap]), [], violation)
            elif gap:
                self._consume(buffer[:gap], base)
            base += gap
            buffer = buffer[gap:]
            if not buffer:
                if eof:
                    return
                continue
            end = buffer.find(MLLP_END, 1)
            restart = buffer.find(MLLP_START, 1, len(buffer) if end < 0 else end)
            if restart > 0 or (end < 0 and (eof or len(buffer) > MAX_MESSAGE_BYTES)):
                cut = restart if restart > 0 else len(buffer)
                problem = "a frame not closed before the next one or the end of the file"
                if end < 0 and not eof and restart < 0:
                    problem = f"a frame longer than {MAX_MESSAGE_BYTES} bytes"
                violation = ContractViolation("truncated_message", problem)
                yield _Unit(base, bytearray(buffer[:cut]), [], violation)
                base += cut
                buffer = buffer[cut:]
                continue
            if end < 0:
                continue
            stop = end + 2 if buffer[end + 1 : end + 2] == b"\r" else end + 1
            segments = [s for s in re.split(rb"[\r\n]+", buffer[1:end]) if s.strip()]
            yield _Unit(base, bytearray(buffer[:stop]), segments)
            base += stop
            buffer = buffer[stop:]

    # ------------------------------------------------------------------ decoding

    def decode(
        self, payload: list[bytes], context: dict[str, Any]
    ) -> AdtMessage | FeedFault | ContractViolation:
        text_segments = [_text(s) for s in payload]
        if not text_segments or not text_segments[0].startswith("MSH") or len(text_segments[0]) < 8:
            return ContractViolation("invalid_hl7", "a message must start with an MSH segment")
        separator = text_segments[0][3]
        try:
            message = hl7.parse("\r".join(text_segments))
            facility = _field(message, "MSH.F4.R1.C1")
            message_type = _field(message, "MSH.F9.R1.C1")
        except Exception as exc:  # the hl7 parser raises many kinds of errors
            return ContractViolation(
                "invalid_hl7", f"hl7 cannot parse the header: {type(exc).__name__}"
            )
        site = facility or "?"
        for index, segment in enumerate(text_segments[1:], start=2):
            identifier = segment[:3]
            if not _SEGMENT_ID.fullmatch(identifier) or segment[3:4] not in ("", separator):
                violation = ContractViolation(
                    "invalid_segment", f"segment {index} has no valid three-character identifier"
                )
                return FeedFault(site, self.feed, violation) if facility else violation
        if not facility:
            return ContractViolation("missing_field", "MSH-4: no sending facility")

        def fault(reason: str, detail: str) -> FeedFault:
            return FeedFault(site, self.feed, ContractViolation(reason, detail))

        if message_type != "ADT":
            return fault("unsupported_message", f"MSH-9 message type {message_type[:3]!r}")
        if not any(s.startswith("EVN") for s in text_segments):
            return fault("missing_segment", "an ADT message needs an EVN segment")
        zone = self._zone(facility)
        values: dict[str, Any] = {
            "sending_facility": facility,
            "message_type": message_type,
            "trigger_event": _field(message, "MSH.F9.R1.C2"),
            "control_id": _field(message, "MSH.F10"),
        }
        for name, path in (("message_at", "MSH.F7"), ("event_at", "EVN.F2")):
            raw = _field(message, path)
            if not raw and name == "event_at":
                continue
            moment = _timestamp(raw, zone)
            if moment is None:
                return fault(
                    "invalid_timestamp", f"{path.replace('.F', '-')} is not a DTM to the minute"
                )
            values[name] = moment
        record = validate_python(AdtMessage, values, context)
        if isinstance(record, ContractViolation):
            return FeedFault(site, self.feed, record)
        return record

    def _zone(self, site: str) -> Any:
        name = self.site_timezones.get(site)
        if name is None:
            return UTC
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            return UTC

    def redact(self, payload: list[bytes] | Any) -> str:
        """Only the MSH segment (no patient data) and the other segments' identifiers."""
        if not isinstance(payload, list) or not payload:
            return ""
        header = _text(payload[0]) if payload[0].startswith(b"MSH") else ""
        others = " ".join(_text(s[:3]) for s in payload[1:])
        return f"{header} [{others}]"[:RAW_LIMIT]


def _segments(handle: IO[bytes], offset: int) -> Iterator[tuple[int, bytes]]:
    """(file offset, bytes with terminator) of every CR/LF/CRLF-terminated segment."""
    carry = b""
    base = offset
    while block := handle.read(BLOCK_BYTES):
        data = carry + block if carry else block
        end = 0
        for match in _SEGMENT.finditer(data):
            if match.end() == len(data) and data.endswith(b"\r"):
                break  # a CR at the end of a block may be the first half of CRLF
            yield base + match.start(), match.group()
            end = match.end()
        carry = data[end:]
        base += end
        if len(carry) > MAX_MESSAGE_BYTES:
            yield base, carry
            base += len(carry)
            carry = b""
    if carry:
        yield base, carry


def _text(segment: bytes) -> str:
    # HL7 v2 defaults to ASCII; bytes that are not UTF-8 are read as ISO-8859-1, which the
    # header fields Vigil reads never need.
    try:
        return segment.decode("utf-8")
    except UnicodeDecodeError:
        return segment.decode("latin-1")


def _field(message: Any, path: str) -> str:
    try:
        return str(message[path]).strip()
    except (KeyError, IndexError):
        return ""


def _timestamp(raw: str, zone: Any) -> datetime | None:
    if not _DTM.fullmatch(raw):
        return None
    try:
        moment: datetime = hl7.parse_datetime(raw)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment
