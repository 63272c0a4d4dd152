"""Render docs/contracts.md from the contracts themselves, so the document cannot drift.

`vigil contracts` writes it; a test fails when the committed file differs from `render()`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from collectors.base import BATCH_UNITS
from collectors.contracts import (
    ALLOWED_CLOCK_SKEW,
    MAX_LINE_BYTES,
    REASONS,
    AdtMessage,
    adapter,
)
from collectors.fhir import MAPPING
from collectors.formats import INPUT_PREFIX, RAW_LIMIT
from collectors.runner import SOURCES

CONTRACTS_MD = Path(__file__).resolve().parent.parent / "docs" / "contracts.md"

# Problems that fail a whole file (`FileUnreadable`): nothing of the file is written.
FILE_ERRORS: tuple[tuple[str, str], ...] = (
    ("cannot open", "missing, unreadable or a folder"),
    ("file is empty", "zero bytes"),
    ("unknown source", "the name matches no source prefix in the table above"),
    ("must end with one of …", "a known prefix with an extension that source does not take"),
    ("gzip-compressed / zip archive", "compressed input; decompress it first"),
    ("UTF-16 / UTF-32 encoded", "a byte-order mark of another encoding"),
    ("NUL bytes", "binary content, or UTF-16 without a byte-order mark"),
    ("CSV header lacks / repeats column(s)", "a required column missing, or a column twice"),
    ("not a readable Parquet file", "a truncated or corrupt Parquet file"),
    ("Parquet schema lacks required column(s)", "a required column missing"),
    ("not HL7 v2", "an .hl7 file that starts with neither MSH/FHS/BHS nor an MLLP block"),
    (
        "read failed after N units",
        "the file broke while being read (an I/O error, a corrupt Parquet row group): unlike "
        "the errors above this one comes mid-file, and the chunks before it stay committed",
    ),
)

IDEMPOTENCY = {
    "predictions": "`prediction_id`; the same id with other content is quarantined "
    "(`duplicate_conflict`) and the first version kept",
    "riskassessment": "as predictions (`prediction_id`)",
    "outcomes": "(encounter, outcome, outcome_at)",
    "encounters": "the encounter",
    "heartbeats": "(feed, site, received_at)",
    "adt": "per file: one `feedstatus` row per (feed, site) and ingest, counts exact across "
    "crashes; a copy of a file under another name counts its messages again",
}


def _type(schema: dict[str, Any]) -> tuple[str, bool]:
    """A field's type in words, and whether null is allowed."""
    options = schema.get("anyOf", [schema])
    nullable = any(o.get("type") == "null" for o in options)
    main = next((o for o in options if o.get("type") != "null"), schema)
    kind = main.get("type", "any")
    if main.get("format") == "date-time":
        text = "timestamp"
    elif kind == "object":
        inner, _ = _type(main.get("additionalProperties", {}))
        text = f"map of name → ({inner})" if " or " in inner else f"map of name → {inner}"
        if nullable:
            return f"{text}, or null", nullable
    elif kind == "number":
        text = "number"
    else:
        text = str(kind)
    return (text + (" or null" if nullable else "")), nullable


def _allowed(schema: dict[str, Any]) -> str:
    options = schema.get("anyOf", [schema])
    main = next((o for o in options if o.get("type") != "null"), schema)
    parts = []
    if "const" in main:
        parts.append(f"`{main['const']}`")
    if "enum" in main:
        parts.append(", ".join(f"`{v}`" for v in main["enum"]))
    if "minimum" in main or "maximum" in main:
        parts.append(f"[{main.get('minimum', '−∞')}, {main.get('maximum', '∞')}]")
    if main.get("type") == "number" or (
        main.get("type") == "object" and main.get("additionalProperties")
    ):
        parts.append("finite")
    if "pattern" in main:
        parts.append("letters, digits, `_.-`")
    if "maxLength" in main:
        parts.append(f"≤ {main['maxLength']} chars")
    if main.get("format") == "date-time":
        parts.append("ISO 8601 with `Z` or an offset")
    return "; ".join(parts) or "—"


def _unit(schema: dict[str, Any]) -> str:
    if "unit" in schema:
        return str(schema["unit"])
    options = schema.get("anyOf", [schema])
    if any(o.get("format") == "date-time" for o in options):
        return "UTC instant"
    return "—"


def _contract_section(title: str, model: type[Any], sources: list[str]) -> list[str]:
    schema = adapter(model).json_schema()
    required = set(schema.get("required", []))
    lines = [
        f"### {title}",
        "",
        f"{schema.get('description', '')} Read from: {', '.join(sources)}.",
        "",
        "| field | type | unit | allowed | required | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for name, prop in schema["properties"].items():
        kind, _ = _type(prop)
        if name in required:
            needed = "required"
        else:
            default = prop.get("default")
            shown = "null" if default is None else str(default).lower()
            needed = f"optional (default `{shown}`)" if shown != "" else "optional (empty)"
        lines.append(
            f"| `{name}` | {kind} | {_unit(prop)} | {_allowed(prop)} | {needed} | "
            f"{prop.get('description', '')} |"
        )
    lines += ["", "Timing and lag:", ""]
    lines += [f"- {rule}." for rule in model.timing]
    lines.append("")
    return lines


def render() -> str:
    skew = int(ALLOWED_CLOCK_SKEW.total_seconds() // 60)
    lines = [
        "# Data contracts",
        "",
        "<!-- Generated from collectors/contracts.py by `vigil contracts`; do not edit. -->",
        "",
        "Every input Vigil collects has a contract: the fields, their types, units and ranges,",
        "which are required, and how late or early its timestamps may be. A row that breaks its",
        "contract goes to the `quarantine` table with a reason code (below), the file and the",
        "line, row or message, and the rest of the file lands. A file that cannot be read at",
        "all fails as a whole, with one message naming the file and the problem, and nothing of",
        "it is written.",
        "",
        "## Files",
        "",
        "`vigil collect PATH...` (and the scheduler, every minute, on the drop folder) routes a",
        "file by its name, case-insensitively: `<source>-<anything>.<extension>`.",
        "",
        "| source | file name | formats | unit located in quarantine | idempotent on |",
        "|---|---|---|---|---|",
    ]
    units = {
        ".jsonl": "line",
        ".ndjson": "line",
        ".csv": "line",
        ".parquet": "row",
        ".hl7": "message + byte",
    }
    for source in SOURCES:
        formats = ", ".join(f"`{e}`" for e in source.extensions)
        where = " / ".join(sorted({units[e] for e in source.extensions}))
        lines.append(
            f"| {source.title} | `{source.name}-*` | {formats} | {where} | "
            f"{IDEMPOTENCY[source.name]} |"
        )
    lines += [
        "",
        "In a folder, hidden files, files still being written (`*.partial`, `*.tmp`, `*.part`:",
        "write under such a name, then rename) and other extensions are left alone. Predictions",
        "are read before labels of the same date, so labels settle in one pass.",
        "",
        "## Running",
        "",
        "- `vigil collect PATH... [--batch-size N] [--no-refresh] [--helper/--no-helper]`: a",
        "  progress bar over the bytes to read, a summary of rows inserted, duplicates skipped",
        "  and rows quarantined; exit status 1 naming every file that could not be read. It",
        "  settles labels and rebuilds the rollups it touched unless `--no-refresh`.",
        "- The scheduler collects the drop folder (`VIGIL_INBOX_DIR`) every minute and moves",
        "  each file to `processed/<date>/` (read) or `processed/rejected/` (unreadable).",
        "- Files over 16 MiB are validated in forked helper processes (two for JSON Lines and",
        "  NDJSON, one otherwise) one chunk ahead of the writes, when a core is idle and the",
        "  process has a single thread (`--helper` forces it); only the collector writes, so",
        "  resuming after a crash is the same either way.",
        "- `vigil quarantine [--source S] [--reason R] [--rows N]` and the dashboard's",
        "  Quarantine page show what was refused, per source and reason.",
        "",
        "## Rules for every source",
        "",
        "- Text is UTF-8; a UTF-8 byte-order mark is accepted. A line may be at most "
        f"{MAX_LINE_BYTES // 1024} KiB (`VIGIL_MAX_LINE_BYTES`).",
        "- Timestamps carry a time zone (`Z` or an offset) and are stored in UTC; a timestamp "
        "without one is refused (`naive_timestamp`), except HL7 DTMs (see below).",
        f"- Allowed clock skew: {skew} minutes. A timestamp later than now plus the skew is "
        "refused (`future_timestamp`); two timestamps of one record may be out of order by "
        "at most the skew (`time_order`).",
        "- Lag is not a fault: late deliveries, late labels and stale feeds are what the "
        "monitors measure. A late outcome settles its predictions positive when it arrives "
        "and the rollup hours it changes are rebuilt.",
        "- Model, version, site and outcome names must be in the registry "
        "(`config/registry.yaml`), else `unknown_model`, `unknown_version`, `unknown_site`, "
        "`unknown_outcome`.",
        "- Encounter ids are replaced at ingestion by HMAC-SHA256 keys under "
        "`VIGIL_PSEUDONYM_KEY`; the raw id is never stored, logged or kept in quarantine "
        f"(quarantine keeps at most {RAW_LIMIT} characters of a refused row, in which the "
        "encounter id and every field the contract does not know read `<redacted>`; of FHIR, "
        "no reference, identifier value, name or narrative; of HL7, only the MSH segment).",
        f"- Each file is read in chunks of {BATCH_UNITS:,} units; a chunk's rows, its quarantined "
        "rows and the file's checkpoint (path, size, content hash of the bytes read, offset: "
        "bytes, or rows for Parquet) commit together. A killed collector resumes at the last "
        "chunk; a file read again, unchanged, adds nothing; a file that changed before its "
        "checkpoint is read again from the start (the natural keys keep that idempotent).",
        "",
        "## Contracts",
        "",
    ]
    by_contract: dict[type[Any], list[str]] = {}
    for source in SOURCES:
        by_contract.setdefault(source.contract, []).extend(
            f"`{source.name}-*{e}`" for e in source.extensions
        )
    titles = {SOURCES[0].contract: "Prediction"}
    for contract, names in by_contract.items():
        if contract is AdtMessage:  # its own section below
            continue
        title = titles.get(contract, contract.__name__.removesuffix("Record"))
        lines += _contract_section(title, contract, names)
    lines += [
        "## CSV and Parquet",
        "",
        "Columns carry the field names above; a header row is required in CSV (comma-separated,",
        "RFC 4180 quoting). Named inputs are columns `" + INPUT_PREFIX + "<name>` (in Parquet,",
        "also a struct or map column `inputs`). An empty cell is an absent value. Columns that",
        "are not fields are ignored. Parquet timestamps should be `timestamp[.., tz=UTC]`; a",
        "timestamp column without a time zone is refused row by row as `naive_timestamp`.",
        "",
        "## FHIR RiskAssessment (Bulk FHIR NDJSON)",
        "",
        "Each line is one resource. It must be a `RiskAssessment` (else `wrong_resource_type`)",
        "that passes FHIR R4 validation by fhir.resources (its R4B models; RiskAssessment is",
        "unchanged between R4 and R4B; else `invalid_fhir`), and the mapped fields must then",
        "pass the Prediction contract.",
        "",
        "| prediction field | from the resource |",
        "|---|---|",
    ]
    lines += [f"| `{name}` | {source} |" for name, source in MAPPING]
    lines += [
        "",
        "## HL7 v2 ADT",
        "",
        "Files are MLLP-framed (`0x0B` message `0x1C 0x0D`) or plain, with segments separated",
        "by CR, LF or CRLF and a new message at each MSH (FHS/BHS/BTS/FTS envelopes are skipped).",
        "Each message is parsed with the `hl7` package. Only the header is read; nothing of the",
        "patient is stored or kept in quarantine (the MSH segment and segment names only).",
        "",
        "| field | from | rule |",
        "|---|---|---|",
    ]
    schema = adapter(AdtMessage).json_schema()
    for name, prop in schema["properties"].items():
        rule = _allowed(prop)
        if _unit(prop) == "UTC instant":
            rule = "DTM `YYYYMMDDHHMM[SS[.S…]][±ZZZZ]`"
        lines.append(f"| `{name}` | {prop.get('description', '')} | {rule} |")
    lines += ["", "Timing:", ""]
    lines += [f"- {rule}." for rule in AdtMessage.timing]
    lines += [
        "- Every segment identifier must be three upper-case letters or digits "
        "(`invalid_segment`); segments before the first MSH are `missing_msh`.",
        "- Per file and per (feed, site) one `feedstatus` row (source `hl7`): last event time, "
        "received time (when the collector read the file), messages, and errors (messages "
        "of that sender refused by the contract).",
        "",
        "## Quarantine reasons",
        "",
        "| reason | meaning |",
        "|---|---|",
    ]
    lines += [f"| `{code}` | {meaning} |" for code, meaning in REASONS.items()]
    lines += [
        "",
        "## File errors",
        "",
        "These fail the whole file (the CLI exits 1 naming it; the scheduler moves it to",
        "`processed/rejected/`); nothing of it is written.",
        "",
        "| message | cause |",
        "|---|---|",
    ]
    lines += [f"| {message} | {cause} |" for message, cause in FILE_ERRORS]
    lines.append("")
    return "\n".join(lines)


def write(path: Path = CONTRACTS_MD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(), encoding="utf-8")
    return path
