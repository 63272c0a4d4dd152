"""Hostile input at the collectors: oversize files and lines, links and odd names in the drop
folder, compressed or malformed Parquet, and markup in free text bound for Slack."""

from __future__ import annotations

import gzip
import json
import os
import random
import zipfile
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collectors.base import FileUnreadable, IngestResult
from collectors.contracts import MAX_LINE_BYTES, size_text
from collectors.runner import collect_files, collect_inbox
from incidents import paging
from store.models import Prediction, Quarantine, table_of
from tests.app.test_hostile_text import app_env, seeded
from tests.collectors.sources import NOW, SECRET, write_parquet
from tests.factories import T0, prediction, write_jsonl
from tests.reliability.conftest import Record, database_of

__all__ = ["app_env", "seeded"]
P, Q = table_of(Prediction), table_of(Quarantine)
_ids = iter(range(500_000, 600_000))


def P_(**overrides: object) -> dict[str, object]:
    n = next(_ids)
    return prediction(n, scored=T0 + timedelta(minutes=n - 500_000), **overrides)


def _count(engine: Engine, table: sa.Table = P) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _collect(
    engine: Engine, paths: list[Path], **kwargs: object
) -> list[IngestResult | FileUnreadable]:
    return list(collect_files(engine, paths, secret=SECRET, now=lambda: NOW, **kwargs))  # type: ignore[arg-type]


def test_size_limits_on_files_and_lines(
    engine: Engine, db_url: str, tmp_path: Path, record: Record
) -> None:
    database = database_of(db_url)
    # Files: over the limit refused whole with one clear error; at the limit read.
    limit = 4_000
    misses: list[str] = []
    sizes = [limit // 2, limit, limit + 1, limit * 10]
    for size in sizes:
        path = tmp_path / f"predictions-size{size}.jsonl"
        records = [P_()]
        write_jsonl(path, records)
        with path.open("ab") as handle:  # pad with blank-free filler records up to `size`
            while path.stat().st_size < size:
                line = json.dumps(P_()).encode() + b"\n"
                handle.write(
                    line[: max(0, size - path.stat().st_size)]
                    if path.stat().st_size + len(line) > size
                    else line
                )
                handle.flush()
        before = _count(engine) + _count(engine, Q)
        [outcome] = _collect(engine, [path], max_file_bytes=limit)
        landed = _count(engine) + _count(engine, Q) - before
        if size > limit:
            if not (
                isinstance(outcome, FileUnreadable)
                and "over the 4000-byte limit" in outcome.problem
                and landed == 0
            ):
                misses.append(f"{size} bytes: {outcome!r}, {landed} rows")
        elif isinstance(outcome, FileUnreadable) or landed == 0:
            misses.append(f"{size} bytes refused: {outcome!r}")
    record(
        area="hostile input",
        fault="drop-folder file over VIGIL_MAX_FILE_BYTES",
        database=database,
        expected="refused whole with one clear error naming the limit; nothing lands; "
        "files at or under the limit are read",
        observed=f"sizes {sizes} against a {limit}-byte limit: "
        + ("as expected" if not misses else f"{misses}"),
        trials=len(sizes),
        failures=len(misses),
    )
    assert not misses, misses

    # Lines: one over the limit is quarantined with its reason; the lines around it land.
    pads = {
        "limit - 1": MAX_LINE_BYTES - 1,
        "limit": MAX_LINE_BYTES,
        "limit + 1": MAX_LINE_BYTES + 1,
        "5 × limit": 5 * MAX_LINE_BYTES,
        "5 MiB": 5 << 20,
    }
    misses = []
    for name, length in pads.items():
        record_ = P_()
        body = json.dumps({**record_, "pad": ""}).encode()
        padded = json.dumps({**record_, "pad": "x" * (length - len(body))}).encode()
        assert len(padded) == length
        path = tmp_path / f"predictions-line-{length}.jsonl"
        write_jsonl(path, [P_(), padded.decode(), P_()])
        before = (_count(engine), _count(engine, Q))
        [outcome] = _collect(engine, [path])
        landed = _count(engine) - before[0]
        with engine.connect() as conn:
            reasons = list(
                conn.execute(
                    sa.select(Q.c.reason).where(Q.c.source_file.like(f"%{path.name}"))
                ).scalars()
            )
        want = (2, ["line_too_long"]) if length > MAX_LINE_BYTES else (3, [])
        if (landed, reasons) != want or isinstance(outcome, FileUnreadable):
            misses.append(f"{name}: {landed} landed, reasons {reasons}")
    record(
        area="hostile input",
        fault=f"a line over the line limit (VIGIL_MAX_LINE_BYTES, {size_text(MAX_LINE_BYTES)}) "
        "among good lines",
        database=database,
        expected="that line quarantined as line_too_long; the lines around it land",
        observed=f"lines of {', '.join(pads)}: " + ("as expected" if not misses else f"{misses}"),
        trials=len(pads),
        failures=len(misses),
    )
    assert not misses, misses


def test_links_and_odd_names_in_the_drop_folder(
    engine: Engine, db_url: str, tmp_path: Path, record: Record
) -> None:
    inbox, processed, outside = tmp_path / "inbox", tmp_path / "processed", tmp_path / "outside"
    outside.mkdir()
    secret_file = write_jsonl(outside / "predictions-outside.jsonl", [P_(), P_()])
    (outside / "nested").mkdir()
    write_jsonl(outside / "nested" / "predictions-deep.jsonl", [P_()])
    original = {p: p.read_bytes() for p in outside.rglob("*.jsonl")}
    inbox.mkdir()
    good = write_jsonl(inbox / "predictions-good.jsonl", [P_(), P_()])
    hostile = {
        "symlink to a file outside": lambda: os.symlink(
            secret_file, inbox / "predictions-link.jsonl"
        ),
        "symlink to a folder outside": lambda: os.symlink(outside, inbox / "predictions-dir"),
        "relative ../ symlink": lambda: os.symlink(
            "../outside/predictions-outside.jsonl", inbox / "predictions-rel.jsonl"
        ),
        "dangling symlink": lambda: os.symlink(
            outside / "missing.jsonl", inbox / "predictions-dangling.jsonl"
        ),
        "hard link to a file outside": lambda: os.link(
            secret_file, inbox / "predictions-hard.jsonl"
        ),
        "name starting with ..": lambda: write_jsonl(inbox / "..predictions-dots.jsonl", [P_()]),
        "name with a newline and markup": lambda: write_jsonl(
            inbox / "predictions-a\n<b>.jsonl", [P_()]
        ),
        "name with ..%2F and spaces": lambda: write_jsonl(
            inbox / "predictions-..%2F.. x.jsonl", [P_()]
        ),
    }
    for make in hostile.values():
        make()
    results = collect_inbox(engine, inbox, processed, secret=SECRET, now=lambda: NOW)
    by_name = {r.path.name: r for r in results}
    misses: list[str] = []
    for name in (
        "predictions-link.jsonl",
        "predictions-dir",
        "predictions-rel.jsonl",
        "predictions-dangling.jsonl",
        "predictions-hard.jsonl",
    ):
        outcome = by_name.get(name)
        if not isinstance(outcome, FileUnreadable) or "link" not in outcome.problem:
            misses.append(f"{name}: {outcome!r}")
        if not os.path.lexists(processed / "rejected" / name):
            misses.append(f"{name} not moved to rejected/")
    rejected_links = [p for p in (processed / "rejected").iterdir() if p.is_symlink()]
    if len(rejected_links) != 4:
        misses.append(f"links kept as links in rejected/: {len(rejected_links)}")
    if {p: p.read_bytes() for p in outside.rglob("*.jsonl")} != original:
        misses.append("a file outside the drop folder changed or moved")
    for name in (
        "predictions-good.jsonl",
        "predictions-a\n<b>.jsonl",
        "predictions-..%2F.. x.jsonl",
    ):
        if not isinstance(by_name.get(name), IngestResult):
            misses.append(f"{name!r} not ingested: {by_name.get(name)!r}")
    if not (inbox / "..predictions-dots.jsonl").exists():  # hidden: left alone
        misses.append("the hidden ..predictions file was touched")
    landed = _count(engine)
    if landed != 4:  # the good file (2) and the two oddly named ones (1 each); nothing from outside
        misses.append(f"{landed} predictions landed, expected 4")
    for path in processed.rglob("*"):
        if not Path(os.path.realpath(path.parent)).is_relative_to(os.path.realpath(processed)):
            misses.append(f"{path} written outside processed/")
    assert good.exists() is False
    record(
        area="hostile input",
        fault="links and odd names in the drop folder (symlinks in and out, ../, hard links, "
        "dangling links, hidden and newline names)",
        database=database_of(db_url),
        expected="links never followed or read: moved to rejected/ as links with a clear error; "
        "files outside untouched; odd but plain names ingested; nothing written outside",
        observed=f"{len(hostile)} hostile entries: "
        + ("as expected; 4 predictions landed, none from outside" if not misses else f"{misses}"),
        trials=len(hostile),
        failures=len(misses),
    )
    assert not misses, misses


def test_compressed_or_malformed_parquet(
    engine: Engine, db_url: str, tmp_path: Path, record: Record
) -> None:
    rng = random.Random(11)
    cases: dict[str, tuple[Path, bool]] = {}
    records = [P_() for _ in range(40)]
    base = write_parquet(tmp_path / "base.parquet", records, row_group_size=8)
    data = base.read_bytes()
    for n, cut in enumerate(sorted(rng.sample(range(8, len(data) - 8), 6))):
        path = tmp_path / f"predictions-cut{n}.parquet"
        path.write_bytes(data[:cut])
        cases[f"truncated at byte {cut} of {len(data)}"] = (path, False)
    last_group = pq.ParquetFile(base).metadata.row_group(4).column(0).file_offset
    for n, offset in enumerate((8, last_group - 40, len(data) - 60)):
        broken = bytearray(data)
        broken[offset : offset + 16] = bytes(rng.randrange(256) for _ in range(16))
        path = tmp_path / f"predictions-garbled{n}.parquet"
        path.write_bytes(bytes(broken))
        cases[f"16 random bytes at offset {offset}"] = (path, False)
    gz = tmp_path / "predictions-gz.parquet"
    gz.write_bytes(gzip.compress(data))
    cases["gzip-compressed Parquet file"] = (gz, False)
    zipped = tmp_path / "predictions-zip.parquet"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("base.parquet", data)
    cases["zip archive named .parquet"] = (zipped, False)
    import pyarrow as pa

    for codec in ("zstd", "gzip", "snappy"):
        path = tmp_path / f"predictions-{codec}.parquet"
        pq.write_table(pq.read_table(base), path, compression=codec)
        cases[f"Parquet with {codec} column compression (valid)"] = (path, True)
    del pa
    misses: list[str] = []
    refused = decoded = 0
    for name, (path, valid) in cases.items():
        before = (_count(engine), _count(engine, Q))
        [outcome] = _collect(engine, [path])
        landed = _count(engine) - before[0]
        if valid:
            if not isinstance(outcome, IngestResult) or outcome.lines != len(records):
                misses.append(f"{name}: {outcome!r}")
            continue
        if not isinstance(outcome, FileUnreadable):
            decoded += 1
            # Garbled data may still decode; then every row must be accounted for, not dropped.
            counted = landed + _count(engine, Q) - before[1]
            if counted != len(records):
                misses.append(
                    f"{name}: read, {landed} landed, {counted} accounted of {len(records)}"
                )
        elif landed:
            misses.append(
                f"{name}: file error but {landed} rows landed first ({outcome.problem[:60]})"
            )
        else:
            refused += 1
    record(
        area="hostile input",
        fault="compressed or malformed Parquet (truncated, garbled, gzip/zip-wrapped)",
        database=database_of(db_url),
        expected="a clear file error and nothing partial; valid column compression is read",
        observed=f"{len(cases)} files: {refused} refused whole with a file error and no row "
        f"landed; {decoded} garbled files still decoded, every row accounted for; 3 valid "
        "codecs read" + (f"; {len(misses)} wrong: {misses}" if misses else ""),
        trials=len(cases),
        failures=len(misses),
    )
    assert not misses, misses


INJECTIONS = [
    "<!channel> wake everyone",
    "<https://evil.example|click here> & <@U024BE7LH>",
    "*bold* _it_ `code` ~strike~ <script>alert(1)</script>",
    "&lt;!here&gt; already escaped",
]


def test_markup_in_free_text_is_escaped_in_slack(record: Record) -> None:
    misses: list[str] = []
    for text in INJECTIONS:
        message = paging.build_killswitch_message(
            enabled=False, scope_text="deterioration at UMC", actor=text, reason=text,
            incident=f"#1 {text}", dashboard="https://vigil.example.org", ttl_seconds=15,
        )  # fmt: skip
        sent = json.dumps(message)
        for raw in ("<!channel>", "<https://evil", "<@U024", "<script>", "&lt;!here"):
            if raw in text and raw in sent and raw != "&lt;!here":
                misses.append(f"{raw!r} reached Slack unescaped from {text!r}")
        if "&lt;!here&gt;" in text and "&amp;lt;!here&amp;gt;" not in sent:
            misses.append("an already-escaped text was not escaped again")
    record(
        area="hostile input",
        fault="Slack markup and HTML in free text (reason, actor, incident) of a kill-switch "
        "notice",
        database="-",
        expected="&, < and > escaped in every mrkdwn field and the notification text: nothing "
        "mentions, links or runs",
        observed=f"{len(INJECTIONS)} payloads: " + ("all escaped" if not misses else f"{misses}"),
        trials=len(INJECTIONS),
        failures=len(misses),
    )
    assert not misses, misses


def test_markup_in_free_text_is_escaped_in_the_governance_report(
    engine: Engine, db_url: str, record: Record
) -> None:
    from datetime import UTC, datetime

    from incidents import actions
    from incidents.auth import Actor, Role
    from reports.governance import Month, gather_report
    from reports.render import render_html
    from tests.incidents.conftest import make_settings

    hostile = '<script>alert(1)</script> & <img src=x onerror="alert(2)"> <!channel>'
    actions.disable_score(
        engine, Actor("Riley <b>Responder</b>", Role.INCIDENT_RESPONDER), model="deterioration",
        site="UMC", reason=hostile, incident_title=f"Drift {hostile}",
        now=datetime(2026, 10, 10, tzinfo=UTC), settings=make_settings(),
    )  # fmt: skip
    html = render_html(
        gather_report(engine, Month(2026, 10), now=datetime(2026, 11, 2, tzinfo=UTC))
    )
    checks = {
        "the reason is shown, escaped": "&lt;script&gt;alert(1)&lt;/script&gt;" in html,
        "no injected <script>": "<script>alert(1)" not in html,
        "no injected element": 'onerror="alert(2)">' not in html and "<b>Responder" not in html,
    }
    record(
        area="hostile input",
        fault="HTML in free text (reason, incident title, actor) shown in the governance report",
        database=database_of(db_url),
        expected="shown as text, escaped; nothing runs",
        observed="; ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items()),
        trials=len(checks),
        failures=sum(not v for v in checks.values()),
    )
    assert all(checks.values()), checks


def test_a_link_swapped_in_after_the_drop_folder_was_listed_is_not_followed(
    engine: Engine, db_url: str, tmp_path: Path, record: Record, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the listing check cannot close: between `unsafe_entries` and the open, a file
    (or a folder on its path) is replaced by a link to data outside the drop folder."""
    inbox, processed, outside = tmp_path / "inbox", tmp_path / "processed", tmp_path / "outside"
    outside_file = write_jsonl(outside / "predictions-secret.jsonl", [P_(), P_(), P_()])
    write_jsonl(outside / "sub" / "predictions-nested.jsonl", [P_(), P_(), P_()])
    original = {p: p.read_bytes() for p in outside.rglob("*.jsonl")}
    write_jsonl(inbox / "predictions-file.jsonl", [P_()])
    write_jsonl(inbox / "sub" / "predictions-nested.jsonl", [P_()])
    write_jsonl(inbox / "predictions-fifo.jsonl", [P_()])
    write_jsonl(inbox / "predictions-hard.jsonl", [P_()])
    write_jsonl(inbox / "predictions-plain.jsonl", [P_(), P_()])

    def file_to_link() -> None:
        (inbox / "predictions-file.jsonl").unlink()
        os.symlink(outside_file, inbox / "predictions-file.jsonl")

    def folder_to_link() -> None:
        (inbox / "sub").rename(tmp_path / "sub-moved-away")
        os.symlink(outside / "sub", inbox / "sub")

    def file_to_fifo() -> None:
        (inbox / "predictions-fifo.jsonl").unlink()
        os.mkfifo(inbox / "predictions-fifo.jsonl")

    def file_to_hard_link() -> None:
        (inbox / "predictions-hard.jsonl").unlink()
        os.link(outside_file, inbox / "predictions-hard.jsonl")

    swaps = {
        "predictions-file.jsonl": (file_to_link, "symbolic link"),
        "predictions-nested.jsonl": (folder_to_link, "symbolic link"),
        "predictions-fifo.jsonl": (file_to_fifo, "not a regular file"),
        "predictions-hard.jsonl": (file_to_hard_link, "hard link"),
    }
    from collectors import runner

    size_check = runner.check_size

    def swap_then_check(path: Path, max_bytes: int) -> None:
        swap = swaps.get(path.name)
        if swap is not None:  # listed as a plain file; replaced just before it is opened
            swap[0]()
        size_check(path, max_bytes)

    monkeypatch.setattr(runner, "check_size", swap_then_check)
    results = runner.collect_inbox(engine, inbox, processed, secret=SECRET, now=lambda: NOW)
    by_name = {r.path.name: r for r in results}
    misses: list[str] = []
    for name, (_, problem) in swaps.items():
        outcome = by_name.get(name)
        if not isinstance(outcome, FileUnreadable) or problem not in outcome.problem:
            misses.append(f"{name}: {outcome!r}")
    if not isinstance(by_name.get("predictions-plain.jsonl"), IngestResult):
        misses.append(f"the plain file was not read: {by_name.get('predictions-plain.jsonl')!r}")
    landed = _count(engine)
    if landed != 2:  # the plain file's two rows; none of the nine outside
        misses.append(f"{landed} predictions landed, expected 2 (nothing from outside)")
    if {p: p.read_bytes() for p in outside.rglob("*.jsonl")} != original:
        misses.append("a file outside the drop folder changed or moved")
    for name in ("predictions-file.jsonl", "sub"):
        if not (processed / "rejected" / name).is_symlink():
            misses.append(f"the swapped-in link {name} was not moved to rejected/ as a link")
    record(
        area="hostile input",
        fault="a drop-folder file (or a folder on its path) replaced by a symbolic link, a hard "
        "link or a FIFO after the folder was checked, before the file is opened",
        database=database_of(db_url),
        expected="opened with O_NOFOLLOW below the inbox and checked by fstat: the link is "
        "refused, never followed; nothing from outside lands; no hang on the FIFO",
        observed=f"{len(swaps)} swaps: "
        + (
            "each refused with a clear error; 2 plain rows landed, none from outside"
            if not misses
            else f"{misses}"
        ),
        trials=len(swaps),
        failures=len(misses),
    )
    assert not misses, misses


def test_markup_in_free_text_is_shown_escaped_on_every_dashboard_page(
    seeded: Engine, db_url: str, record: Record
) -> None:
    from tests.app.test_hostile_text import FIELDS, PAGES, scan_pages

    leaks, unseen, rendered = scan_pages()
    record(
        area="hostile input",
        fault="HTML, script, Markdown links and images, Streamlit directives and Slack "
        f"mentions in {len(FIELDS)} free-text fields (kill-switch reason, actor, incident "
        "title, audit notes, alert text, model and version names, model title and lineage, "
        f"quarantine detail and row) on every dashboard page ({len(PAGES)} pages, as admin "
        "and as viewer)",
        database=database_of(db_url),
        expected="shown as text: no st.html or unsafe_allow_html element carries it, every "
        "Markdown-rendered text (markdown, captions, headings, alerts, labels) escapes it; "
        "each field is shown somewhere",
        observed=(
            f"{rendered} page renders: every field shown, none live"
            if not leaks and not unseen
            else f"live: {leaks}; never shown: {unseen}"
        ),
        trials=rendered,
        failures=sum(map(len, leaks.values())) + len(unseen),
    )
    assert not leaks, leaks
    assert not unseen, unseen
