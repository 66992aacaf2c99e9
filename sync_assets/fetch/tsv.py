"""Report documents (tab-separated flat files) -> rows for `rows_to_frame`, tolerantly.

Amazon's flat-file reports are UTF-8 or the marketplace's legacy charset (Cp1252 in Europe,
Shift_JIS in Japan; the download's Content-Type may say), gzip-compressed when the report document
says `compressionAlgorithm: GZIP`, plain (`GET_FBA_REIMBURSEMENTS_DATA`: no quoting at all, a
quote is a character of the value) or with every field in double quotes (the ledger reports).
Their header row names the columns (`approval-date`, `Date and Time`), and their values are text:
dates in several spellings (ISO 8601 with an offset, `2024-05-01 07:00:00 UTC`, `05/01/2024`,
`01.05.2024`, `May 1, 2024 12:00:00 AM PDT`) and money with currency signs, codes, thousands
separators or a decimal comma (`$1,234.56`, `1.234,56 €`, `(12.00)`).

`tsv_rows` maps the header onto declared columns (by `Column.source`, else by name: `approval-date`,
`approval_date` and `Approval Date` are one name) and turns every value into what `rows_to_frame`
takes: ISO 8601 UTC text for timestamps, `YYYY-MM-DD` for dates, plain decimal text (`-1234.56`)
for money, Python ints, floats and booleans; an empty cell is None. A value that cannot be read is
a `MalformedPayload` naming the line, the column and the value, never a guess.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import unicodedata
import zlib
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Sequence

from ..core.datasets import Column, ColumnType
from ..core.errors import MalformedPayload

__all__ = [
    "decode_document",
    "parse_bool",
    "parse_date",
    "parse_decimal",
    "parse_timestamp",
    "read_tsv",
    "tsv_rows",
]

_GZIP_MAGIC = b"\x1f\x8b"

# Zone abbreviations Amazon's reports print after a time (settlement, date-range and order reports).
_ZONES: dict[str, float] = {
    "UTC": 0, "GMT": 0, "Z": 0, "PST": -8, "PDT": -7, "MST": -7, "MDT": -6, "CST": -6, "CDT": -5,
    "EST": -5, "EDT": -4, "AKST": -9, "AKDT": -8, "HST": -10, "BST": 1, "WET": 0, "WEST": 1, "CET": 1,
    "CEST": 2, "MET": 1, "MEST": 2, "EET": 2, "EEST": 3, "IST": 5.5, "JST": 9, "AEST": 10, "AEDT": 11,
    "SGT": 8, "BRT": -3,
}
# strptime spellings besides ISO 8601, tried in order; "{md}" is month/day (or day/month with day_first)
_FORMATS = (
    "%Y-%m-%d %H:%M:%S %z", "%Y-%m-%d %H:%M %z", "%Y/%m/%d %H:%M:%S", "%Y/%m/%d",
    "{md}/%Y %H:%M:%S", "{md}/%Y %H:%M", "{md}/%Y %I:%M:%S %p", "{md}/%Y %I:%M %p", "{md}/%Y",
    "%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M", "%d.%m.%Y",
    "%b %d, %Y %I:%M:%S %p", "%b %d, %Y %H:%M:%S", "%b %d, %Y", "%B %d, %Y %I:%M:%S %p", "%B %d, %Y",
    "%d %b %Y %H:%M:%S", "%d %b %Y", "%d-%b-%Y", "%d-%b-%Y %H:%M:%S", "%b %d %Y",
)
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}
_NUMBER = re.compile(r"\d[\d.,' ]*|[.,]\d+")


# -- bytes -> text --------------------------------------------------------------------------------


def decode_document(content: bytes, compression: str | None = None, charset: str | None = None) -> str:
    """A downloaded report document as text: gunzipped when the document said GZIP (or the bytes
    are gzip: a client that asked for Content-Encoding got it decoded already, so the magic bytes
    decide), decoded with the declared charset, else UTF-8 (a BOM dropped), else Cp1252, else Latin-1."""
    if content[:2] == _GZIP_MAGIC:
        try:
            content = gzip.decompress(content)
        except (OSError, EOFError, zlib.error) as exc:
            raise MalformedPayload(f"report document: declared {compression or 'gzip'} but does not gunzip ({exc})") from None
    elif compression and compression.upper() not in ("GZIP",):
        raise MalformedPayload(f"report document: unknown compressionAlgorithm {compression!r}")
    if charset:
        try:
            return content.decode(charset).lstrip("\ufeff")
        except (LookupError, UnicodeDecodeError):
            pass  # a wrong or unknown label: guess like an undeclared one
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return content.decode(encoding)
        except UnicodeDecodeError:
            continue
    return content.decode("latin-1")


def read_tsv(document: str | bytes) -> tuple[list[str], list[dict[str, str]]]:
    """The header and the rows of a tab-separated document, every value as the file spells it.

    Quoting is decided by the header: a first field in double quotes means every field is quoted
    (the ledger reports); otherwise nothing is (a quote is part of the value, as in
    `Ruler 12" steel`). CRLF or LF line ends, blank lines and a missing last newline are fine; a row
    shorter than the header is padded with empty values, a longer one must only add empty cells."""
    text = decode_document(document) if isinstance(document, bytes) else document.lstrip("\ufeff")
    if not text.strip():
        return [], []
    quoted = text.lstrip("\r\n").startswith('"')
    if quoted:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quotechar='"', doublequote=True, strict=False)
        lines = [(reader.line_num, row) for row in reader]
    else:
        lines = [(n, line.removesuffix("\r").split("\t")) for n, line in enumerate(text.split("\n"), start=1)]
    lines = [(n, row) for n, row in lines if any(cell.strip() for cell in row)]
    if not lines:
        return [], []
    header = [h.strip() for h in lines[0][1]]
    while header and not header[-1]:
        header.pop()
    if len(set(header)) != len(header):
        dupes = sorted({h for h in header if header.count(h) > 1})
        raise MalformedPayload(f"report document: the header repeats column(s) {dupes}")
    rows = []
    width = len(header)
    for line, cells in lines[1:]:
        if len(cells) > width:
            if any(c.strip() for c in cells[width:]):
                raise MalformedPayload(f"report document line {line}: {len(cells)} values for {width} columns")
            cells = cells[:width]
        elif len(cells) < width:
            cells = cells + [""] * (width - len(cells))
        rows.append(dict(zip(header, cells)))
    return header, rows


# -- rows for declared columns --------------------------------------------------------------------


def _key(name: str) -> str:
    """`approval-date`, `approval_date`, `Approval Date` -> `approval_date`."""
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def tsv_rows(
    content: bytes | str,
    columns: Sequence[Column],
    where: str,
    *,
    compression: str | None = None,
    charset: str | None = None,
    day_first: bool = False,
    decimal_comma: bool | None = None,
) -> list[dict[str, Any]]:
    """Rows of a report document for `rows_to_frame(rows, columns, where)`.

    `day_first`: slash dates are DD/MM/YYYY (Amazon's EU/IN files) rather than MM/DD/YYYY.
    `decimal_comma`: True for marketplaces writing `12,50`; False for `1,234`; None guesses per
    value (a single comma followed by other than three digits is a decimal comma)."""
    if isinstance(content, bytes):
        content = decode_document(content, compression, charset)
    header, raw = read_tsv(content)
    if not header and not raw:
        return []
    by_key = {_key(h): h for h in header}
    plan: list[tuple[Column, str | None, Callable[[str], Any]]] = []
    for column in columns:
        wanted = column.source or column.name
        found = wanted if wanted in header else by_key.get(_key(wanted))
        if found is None and column.required:
            raise MalformedPayload(f"{where}: the report has no column {wanted!r} (its header: {', '.join(header)[:400]})")
        plan.append((column, found, _converter(column, day_first, decimal_comma)))
    rows = []
    for number, values in enumerate(raw, start=2):  # line 1 is the header
        row: dict[str, Any] = {}
        for column, source, convert in plan:
            cell = values.get(source, "") if source is not None else ""
            if not cell.strip():
                row[column.name] = None
                continue
            try:
                row[column.name] = convert(cell)
            except ValueError as exc:
                raise MalformedPayload(f"{where}: row {number} column {source!r}: {cell!r:.60} {exc}") from None
        rows.append(row)
    return rows


def _converter(column: Column, day_first: bool, decimal_comma: bool | None) -> Callable[[str], Any]:
    kind = column.type
    if kind is ColumnType.TIMESTAMP:
        return lambda v: parse_timestamp(v, day_first, column.formats)
    if kind is ColumnType.DATE:
        return lambda v: parse_date(v, day_first, column.formats)
    if kind is ColumnType.DECIMAL:
        return lambda v: parse_decimal(v, decimal_comma)
    if kind is ColumnType.INT64:
        return lambda v: _integer(v, decimal_comma)
    if kind is ColumnType.FLOAT64:
        return lambda v: float(parse_decimal(v, decimal_comma))
    if kind is ColumnType.BOOL:
        return parse_bool
    return lambda v: v  # STRING and JSON: the text as written


# -- values ---------------------------------------------------------------------------------------


def parse_timestamp(text: str, day_first: bool = False, formats: Sequence[str] = ()) -> str:
    """A date/time as Amazon writes it -> ISO 8601 in UTC (`2024-05-01T14:00:00Z`). A time
    without a zone is UTC (SP-API's times are); a bare date is its midnight UTC."""
    moment = _moment(text, day_first, formats)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{moment.microsecond:06d}" if moment.microsecond else "") + "Z"


def parse_date(text: str, day_first: bool = False, formats: Sequence[str] = ()) -> str:
    """A date (or the date part of a date/time, in the zone it is written in) -> `YYYY-MM-DD`."""
    return _moment(text, day_first, formats).strftime("%Y-%m-%d")


def _moment(text: str, day_first: bool, formats: Sequence[str]) -> datetime:
    value = " ".join(text.split())
    zone: timezone | None = None
    rest, _, last = value.rpartition(" ")
    if rest and last.upper() in _ZONES:  # 2024-05-01 07:00:00 UTC, May 1, 2024 12:00:00 AM PDT
        value, zone = rest, timezone(timedelta(hours=_ZONES[last.upper()]))
    parsed = _iso(value)
    if parsed is None:
        md = "%d/%m" if day_first else "%m/%d"
        for fmt in (*formats, *_FORMATS):
            try:
                parsed = datetime.strptime(value, fmt.replace("{md}", md))
                break
            except ValueError:
                continue
    if parsed is None:
        raise ValueError("is not a date/time in a format Amazon uses")
    if zone is not None:
        if parsed.tzinfo is not None:
            raise ValueError("names two time zones")
        parsed = parsed.replace(tzinfo=zone)
    return parsed


def _iso(value: str) -> datetime | None:
    if not value[:4].isdigit() or len(value) < 8:
        return None
    candidate = value[:-1] + "+00:00" if value[-1:] in ("Z", "z") else value
    candidate = re.sub(r"([+-]\d\d)(\d\d)$", r"\1:\2", candidate)  # +0000 -> +00:00
    try:
        return datetime.fromisoformat(candidate)
    except ValueError:
        return None


def parse_decimal(text: str, decimal_comma: bool | None = None) -> str:
    """Money as Amazon writes it -> plain decimal text: `$1,234.56` -> `1234.56`, `-€12,50` /
    `12,50 €` / `(12.50)` / `12.50-` -> `-12.50`, `USD 1 234.00` -> `1234.00`. Currency signs and
    ISO codes may lead or trail; anything else around the number is refused."""
    value = text.strip().replace("\u00a0", " ").replace("\u202f", " ").replace("\u2212", "-")
    signs = []
    if value.startswith("(") and value.endswith(")"):  # (12.00): accounting's negative
        signs, value = ["-"], value[1:-1].strip()
    value, sign = _strip_sign(value)  # -$12.00
    value = _strip_currency(value, leading=True)
    value, sign_after = _strip_sign(value)  # $-12.00
    value = _strip_currency(value, leading=False)  # 12.00 USD
    if value.endswith("-"):  # 12.50-
        signs, value = signs + ["-"], value[:-1].strip()
    signs += [s for s in (sign, sign_after) if s]
    if len(signs) > 1:
        raise ValueError("has two signs")
    negative = signs == ["-"]
    if not _NUMBER.fullmatch(value):
        raise ValueError("is not an amount")
    digits = _plain_number(value.replace(" ", "").replace("'", ""), decimal_comma)
    try:
        amount = Decimal(digits)
    except InvalidOperation:
        raise ValueError("is not an amount") from None
    text_out = format(amount, "f")
    return ("-" + text_out) if negative and amount != 0 else text_out


def _strip_sign(value: str) -> tuple[str, str]:
    """(the rest, "-" / "+" / "")."""
    if value[:1] in ("-", "+"):
        return value[1:].strip(), value[0]
    return value, ""


def _strip_currency(value: str, leading: bool) -> str:
    """Drop a leading (or trailing) currency sign or code (`US$`, `€`, `EUR`, `kr.`, `zł`)."""
    def is_currency(part: str) -> bool:
        return bool(part) and all(unicodedata.category(c) == "Sc" or c.isalpha() or c == "." for c in part) \
            and sum(c.isalpha() for c in part) <= 3 and not part.strip(".") == ""

    if leading:
        match = re.match(r"^([A-Za-z]{1,3}\.)\s*(.*)$", value) or re.match(r"^([^\d\s.,()+-]+)\s*(.*)$", value)
        return match.group(2).strip() if match and is_currency(match.group(1)) else value
    match = re.match(r"^(.*?)\s*([^\d\s.,()+-]+\.?)$", value)
    return match.group(1).strip() if match and is_currency(match.group(2)) else value


def _plain_number(value: str, decimal_comma: bool | None) -> str:
    commas, dots = value.count(","), value.count(".")
    if commas and dots:  # the rightmost separator is the decimal one
        decimal, grouping = ("," , ".") if value.rfind(",") > value.rfind(".") else (".", ",")
        if value.count(decimal) > 1 or value.rfind(grouping) > value.rfind(decimal):
            raise ValueError("has separators in no known order")
        return value.replace(grouping, "").replace(decimal, ".")
    if commas:
        after = len(value) - value.rfind(",") - 1
        if decimal_comma is None:
            decimal_comma = commas == 1 and after != 3
        if decimal_comma:
            if commas > 1:
                raise ValueError("has several decimal commas")
            return value.replace(",", ".")
        return value.replace(",", "")
    if dots > 1 or (dots == 1 and decimal_comma and len(value) - value.rfind(".") - 1 == 3):
        return value.replace(".", "")  # 1.234.567 (dots group thousands)
    return value


def _integer(text: str, decimal_comma: bool | None) -> int:
    amount = Decimal(parse_decimal(text, decimal_comma))
    if amount != amount.to_integral_value():
        raise ValueError("is not a whole number")
    return int(amount)


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("is not a yes/no value")
