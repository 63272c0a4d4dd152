"""Route source files to their format and sink by name, and collect the drop folder.

A file's name says what it holds: `<source>-<anything>.<extension>` (see `SOURCES`), e.g.
`predictions-2026-09-01.csv` or `adt-umc-0900.hl7`. Bulk FHIR exports keep their own names
(`RiskAssessment.ndjson`, `RiskAssessment-2.ndjson`): the match is case-insensitive.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collectors.base import (
    BATCH_UNITS,
    FileUnreadable,
    IngestResult,
    RecordSink,
    SourceFormat,
    ingest_file,
)
from collectors.contracts import (
    AdtMessage,
    EncounterRecord,
    HeartbeatRecord,
    OutcomeRecord,
    PredictionRecord,
)
from collectors.fhir import RiskAssessmentNdjson
from collectors.formats import CsvRecords, JsonLines, ParquetRows
from collectors.hl7v2 import Hl7Messages
from collectors.sinks import (
    AdtFeedSink,
    EncounterSink,
    HeartbeatSink,
    OutcomeSink,
    PredictionSink,
)
from store.models import Site, table_of, utcnow
from store.registry import RegistryLookup
from vigil.config import get_settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One kind of input: its file-name prefix, contract and accepted file formats."""

    name: str
    contract: type[Any]
    extensions: tuple[str, ...]
    title: str


SOURCES: tuple[Source, ...] = (
    Source("predictions", PredictionRecord, (".jsonl", ".csv", ".parquet"), "Prediction logs"),
    Source("riskassessment", PredictionRecord, (".ndjson",), "FHIR R4 RiskAssessment (Bulk FHIR)"),
    Source("outcomes", OutcomeRecord, (".jsonl", ".csv"), "Outcome labels"),
    Source("encounters", EncounterRecord, (".jsonl", ".csv"), "Encounter closures"),
    Source("heartbeats", HeartbeatRecord, (".jsonl", ".csv"), "Feed heartbeats"),
    Source("adt", AdtMessage, (".hl7",), "HL7 v2 ADT messages"),
)
EXTENSIONS = tuple(sorted({e for s in SOURCES for e in s.extensions}))
_ORDER = {s.name: i for i, s in enumerate(SOURCES)}
# Files being written: the drop-folder convention is to write under one of these and rename.
_IN_PROGRESS = (".partial", ".tmp", ".part")


def source_of(path: Path) -> tuple[Source, str]:
    """The source a file holds and its format (extension), from the file's name."""
    name = path.name.lower()
    for source in SOURCES:
        if name.startswith(source.name):
            for extension in source.extensions:
                if name.endswith(extension):
                    return source, extension
            accepted = ", ".join(source.extensions)
            raise FileUnreadable(path, f"a {source.name} file must end with one of {accepted}")
    names = "|".join(s.name for s in SOURCES)
    raise FileUnreadable(path, f"unknown source: expected a name like '<{names}>-*.<format>'")


def site_timezones(engine: Engine) -> dict[str, str]:
    sites = table_of(Site)
    with engine.connect() as conn:
        return {
            code: zone for code, zone in conn.execute(sa.select(sites.c.code, sites.c.timezone))
        }


def reader_for(source: Source, extension: str, *, timezones: dict[str, str]) -> SourceFormat[Any]:
    """A fresh reader for one file (readers keep the file's hashing state)."""
    if source.name == "riskassessment":
        return RiskAssessmentNdjson()
    if source.name == "adt":
        return Hl7Messages(timezones)
    if extension == ".csv":
        return CsvRecords(source.contract)
    if extension == ".parquet":
        return ParquetRows(source.contract)
    return JsonLines(source.contract)


def sink_for(
    source: Source, registry: RegistryLookup, secret: str, *, received_at: datetime
) -> RecordSink[Any]:
    if source.contract is PredictionRecord:
        return PredictionSink(registry, secret)
    if source.name == "outcomes":
        return OutcomeSink(registry, secret)
    if source.name == "encounters":
        return EncounterSink(registry, secret)
    if source.name == "adt":
        return AdtFeedSink(registry, received_at)
    return HeartbeatSink(registry)


def _wanted(path: Path) -> bool:
    name = path.name.lower()
    return (
        path.is_file()
        and not name.startswith(".")
        and not name.endswith(_IN_PROGRESS)
        and name.endswith(EXTENSIONS)
    )


def expand(paths: Iterable[Path]) -> list[Path]:
    """Files named, and the source files inside folders named, in a stable ingest order.

    Inside folders, hidden files, files still being written (`*.partial`, `*.tmp`, `*.part`)
    and files of no known format are left alone.
    """
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*")) if _wanted(p))
        else:
            found.append(path)

    # Predictions before labels so labels settle in one pass; then by name (time order).
    def sort_key(p: Path) -> tuple[str, int, str]:
        try:
            source, extension = source_of(p)
        except FileUnreadable:
            return (p.name, len(SOURCES), "")
        rest = p.name[len(source.name) : len(p.name) - len(extension)].lstrip("-_.")
        return (rest, _ORDER[source.name], p.name)

    return sorted(found, key=sort_key)


def check_size(path: Path, max_bytes: int) -> None:
    """Refuse a file larger than the configured limit before reading any of it."""
    try:
        size = path.stat().st_size
    except OSError:
        return  # the reader names a missing or unreadable file itself
    if size > max_bytes:
        raise FileUnreadable(
            path, f"file is {size} bytes, over the {max_bytes}-byte limit (VIGIL_MAX_FILE_BYTES)"
        )


def collect_files(
    engine: Engine,
    paths: Iterable[Path],
    *,
    secret: str,
    now: Callable[[], datetime] = utcnow,
    on_file: Callable[[Path, IngestResult | FileUnreadable], None] | None = None,
    batch_units: int = BATCH_UNITS,
    progress: Callable[[int], None] | None = None,
    helper: bool | None = None,
    max_file_bytes: int | None = None,
    opener: Callable[[Path], IO[bytes]] | None = None,
) -> Iterator[IngestResult | FileUnreadable]:
    """Ingest each file; an unreadable file is reported and skipped, the others still land.

    `helper`: prepare chunks in helper processes (None: for large files; see `ingest_file`).
    `max_file_bytes`: larger files are refused whole (default: VIGIL_MAX_FILE_BYTES).
    `opener`: how each file is opened (default: a plain open; see `open_in_inbox`).
    """
    registry = RegistryLookup.load(engine)
    timezones = site_timezones(engine)
    limit = max_file_bytes if max_file_bytes is not None else get_settings().max_file_bytes
    for path in expand(paths):
        outcome: IngestResult | FileUnreadable
        try:
            check_size(path, limit)
            source, extension = source_of(path)
            outcome = ingest_file(
                engine,
                path,
                reader_for(source, extension, timezones=timezones),
                sink_for(source, registry, secret, received_at=now()),
                kind=source.name,
                now=now,
                batch_units=batch_units,
                progress=progress,
                helper=helper,
                opener=opener,
            )
        except FileUnreadable as exc:
            logger.error("%s", exc)
            outcome = exc
        if on_file is not None:
            on_file(path, outcome)
        yield outcome


_LINK = "a symbolic link: the drop folder takes regular files only (not followed)"
_HARD_LINK = "a hard link: the drop folder takes regular files only (not read)"


def unsafe_entries(inbox: Path) -> list[FileUnreadable]:
    """Entries of the drop folder that could make the collector read outside it: symbolic
    links (to files or folders, never followed) and hard links of files."""
    found: list[FileUnreadable] = []
    for root, folders, files in os.walk(inbox):  # does not descend into linked folders
        for name in sorted(folders + files):
            path = Path(root) / name
            if path.is_symlink():
                found.append(FileUnreadable(path, _LINK))
            elif name in files and path.stat().st_nlink > 1:
                found.append(FileUnreadable(path, _HARD_LINK))
    return found


def open_in_inbox(path: Path, inbox: Path) -> IO[bytes]:
    """Open a drop-folder file for reading without following a link anywhere below the inbox.

    `unsafe_entries` refuses links before anything is read, but a link can be swapped in
    between that look and the open. So each folder below the inbox, and then the file, is
    opened relative to the one above with O_NOFOLLOW (a link there fails to open), and the
    opened descriptor itself must be a regular file with a single link (fstat, not the path).
    O_NONBLOCK keeps a FIFO swapped in from blocking the open; it is cleared after the check.
    """
    parts = Path(os.path.relpath(path, inbox)).parts
    if not parts or parts[0] == os.pardir:
        raise FileUnreadable(path, "not inside the drop folder (not read)")
    folder = os.open(inbox, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            below = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder
            )
            os.close(folder)
            folder = below
        fd = os.open(
            parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder
        )
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # a link where a file or folder was
            raise FileUnreadable(path, _LINK) from exc
        raise FileUnreadable(path, f"cannot open: {exc.strerror or exc}") from exc
    finally:
        os.close(folder)
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise FileUnreadable(path, "not a regular file: the drop folder takes files only")
        if opened.st_nlink > 1:
            raise FileUnreadable(path, _HARD_LINK)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _first_link(path: Path, inbox: Path) -> Path:
    """The first folder below the inbox on the way to `path` that is a symbolic link, or `path`
    itself (a link or not)."""
    here = inbox
    for part in Path(os.path.relpath(path, inbox)).parts[:-1]:
        here = here / part
        if here.is_symlink():
            return here
    return path


def _inside(path: Path, inbox: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(inbox))


def collect_inbox(
    engine: Engine,
    inbox: Path,
    processed: Path,
    *,
    secret: str,
    now: Callable[[], datetime] = utcnow,
    max_file_bytes: int | None = None,
) -> list[IngestResult | FileUnreadable]:
    """Ingest every file in the drop folder, then move each finished file out of it.

    Unreadable files go to `<processed>/rejected/`, the others to `<processed>/<date>/`.
    Links (symbolic or hard) are never read: they are moved to `rejected/` as links, also when
    one replaces a file after the folder was listed (`open_in_inbox`).
    """
    if not inbox.exists():
        return []
    unsafe = unsafe_entries(inbox)
    for problem in unsafe:
        logger.error("%s", problem)
    skipped = {p.path for p in unsafe}
    files = [
        p
        for p in expand([inbox])
        if p not in skipped and not any(s in p.parents for s in skipped) and _inside(p, inbox)
    ]
    ingested = collect_files(
        engine,
        files,
        secret=secret,
        now=now,
        max_file_bytes=max_file_bytes,
        opener=functools.partial(open_in_inbox, inbox=inbox),
    )
    results: list[IngestResult | FileUnreadable] = []
    for outcome in itertools.chain(unsafe, ingested):
        results.append(outcome)
        # A folder on the path swapped for a link: move the link, never what it points to.
        path = _first_link(outcome.path, inbox)
        if not os.path.lexists(path):  # a link already moved for an earlier file below it
            continue
        sub = (
            "rejected"
            if isinstance(outcome, FileUnreadable) or path != outcome.path
            else utcnow().strftime("%Y-%m-%d")
        )
        target = processed / sub / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        serial = 1
        while os.path.lexists(target):  # never overwrite an earlier file of the same name
            serial += 1
            target = processed / sub / f"{path.stem}.{serial}{path.suffix}"
        shutil.move(str(path), target)
    return results
