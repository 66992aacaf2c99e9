"""Reports API 2021-06-30 for the dynamic sandbox: createReport, getReports, getReport,
cancelReport, getReportDocument, and the pre-signed document URLs the sandbox itself serves.

A report moves IN_QUEUE -> IN_PROGRESS -> DONE by the clock (``queue_seconds``, then
``processing_seconds``); it ends CANCELLED when its window holds no rows, when cancelled while
IN_QUEUE, or when a report of the same type was requested within ``cooldown_seconds`` (Amazon's
generation limit for FBA reports; off by default); FATAL only when forced (:meth:`Reports.force`),
with an error document.  Rows are read from the world when the report completes.

Documents: GET_FBA_REIMBURSEMENTS_DATA is a plain tab-separated file, GET_LEDGER_DETAIL_VIEW_DATA a
tab-separated file with every field in double quotes; each report type in ``gzip_types`` is stored
gzip-compressed (``compressionAlgorithm: GZIP``).  The URL is signed, lives ``url_ttl`` seconds
(Amazon: 5 minutes) and then answers 403 with S3's XML ``AccessDenied`` body.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import hmac
import io
import random
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping
from urllib.parse import quote

import orjson

from .common import ApiError, UTC, fmt_ms, from_epoch, invalid, parse_time
from .operations import Call
from .paging import TokenStore, TokenUnusable
from .seed import Ids
from .world import LEDGER_COLUMNS, REIMBURSEMENT_COLUMNS, World

__all__ = ["PROCESSING_STATUSES", "REPORT_TYPES", "ReportConfig", "Reports"]

REIMBURSEMENTS = "GET_FBA_REIMBURSEMENTS_DATA"
LEDGER = "GET_LEDGER_DETAIL_VIEW_DATA"
REPORT_TYPES = (REIMBURSEMENTS, LEDGER)
PROCESSING_STATUSES = ("CANCELLED", "DONE", "FATAL", "IN_PROGRESS", "IN_QUEUE")
LEDGER_EVENT_TYPES = ("Adjustments", "CustomerReturns", "Receipts", "Shipments", "VendorReturns", "WhseTransfers")
RETENTION = timedelta(days=90)
FATAL_DETAILS = "The report could not be generated because of an internal error. Request it again."


@dataclass(frozen=True)
class ReportConfig:
    queue_seconds: float = 1.0
    processing_seconds: float = 2.0
    cooldown_seconds: float = 0.0  # same seller and type requested again within this: CANCELLED
    url_ttl: float = 300.0
    gzip_types: tuple[str, ...] = (LEDGER,)
    token_ttl: float = 3600.0


@dataclass
class _Report:
    report_id: str
    seller: str
    report_type: str
    marketplace_ids: list[str]
    start: datetime
    end: datetime
    options: dict[str, str]
    created: float
    queue_s: float
    processing_s: float
    forced: str | None = None  # "FATAL" | "CANCELLED"
    cancelled_at: float | None = None
    outcome: str | None = None  # the final status, once reached
    document_id: str | None = None


@dataclass(frozen=True)
class _Document:
    seller: str
    content: bytes  # as stored: gzip-compressed when ``gzipped``
    gzipped: bool
    content_type: str


@dataclass
class ReportCounters:
    #: (seller, report type, dataStartTime, dataEndTime) -> createReport calls
    created: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    downloads: int = 0
    expired_downloads: int = 0
    refused_downloads: int = 0  # bad or missing signature


class Reports:
    def __init__(self, world: World, clock: Callable[[], float], tokens: TokenStore, config: Callable[[], ReportConfig], seed: int) -> None:
        self.world = world
        self._clock = clock
        self._tokens = tokens
        self._config = config
        self._lock = threading.RLock()
        self._ids = Ids(random.Random(f"{seed}:reports"), set())
        self._key = secrets.token_bytes(32)  # signs document URLs
        self._reports: dict[str, dict[str, _Report]] = {}  # seller -> report id -> report
        self._documents: dict[str, _Document] = {}
        self._forced: list[tuple[str, str | None]] = []  # (outcome, report type or None = any)
        self.counters = ReportCounters()

    # ------------------------------------------------------------------ knobs

    def force(self, outcome: str, count: int = 1, report_type: str | None = None) -> None:
        """The next ``count`` reports (of ``report_type``, or any) end ``outcome`` (FATAL or CANCELLED)."""
        if outcome not in ("FATAL", "CANCELLED"):
            raise ValueError("outcome must be FATAL or CANCELLED")
        with self._lock:
            self._forced += [(outcome, report_type)] * int(count)

    def reset_counters(self) -> None:
        with self._lock:
            self.counters = ReportCounters()

    def report(self, seller: str, report_id: str) -> dict[str, Any]:
        """A report as getReport answers it now (tests and the admin API)."""
        with self._lock:
            return self._render(self._get(seller, report_id))

    # ------------------------------------------------------------------ operations

    def handle(self, call: Call) -> tuple[int, Any]:
        handler = {
            "createReport": self.create,
            "getReports": self.list,
            "getReport": self.get,
            "cancelReport": self.cancel,
            "getReportDocument": self.document,
        }[call.op]
        with self._lock:
            return handler(call)

    def create(self, call: Call) -> tuple[int, Any]:
        spec = _json_object(call.body)
        report_type, marketplaces, options = _specification(spec, self.world.seller(call.seller).marketplaces)
        now = from_epoch(self._clock())
        start, end = _data_window(spec, now)
        key = (call.seller, report_type, spec.get("dataStartTime") or "", spec.get("dataEndTime") or "")
        self.counters.created[key] = self.counters.created.get(key, 0) + 1
        cfg = self._config()
        report = _Report(
            self._ids.digits(11), call.seller, report_type, marketplaces, start, end, options,
            self._clock(), cfg.queue_seconds, cfg.processing_seconds, forced=self._take_forced(report_type),
        )
        if report.forced is None and self._cooling_down(report, cfg.cooldown_seconds):
            report.forced = "CANCELLED"
        self._reports.setdefault(call.seller, {})[report.report_id] = report
        return 202, {"reportId": report.report_id}

    def list(self, call: Call) -> tuple[int, Any]:
        token = call.one("nextToken")
        if token is not None:
            if set(call.query) != {"nextToken"}:
                raise invalid("nextToken must be the only parameter when it is provided.")
            try:
                cursor = self._tokens.lookup(call.seller, call.op, token)
            except TokenUnusable:
                raise invalid("Invalid nextToken.") from None
            filters, start = dict(cursor.params), cursor.position
        else:
            filters, start = dict(call.arguments()), 0
        query = Call(call.seller, call.op, {k: list(v) for k, v in filters.items()}, {}, b"", call.now, call.base_url)
        reports = self._matching(query)
        size = query.integer("pageSize", 10, 1, 100)
        page = reports[start : start + size]
        body: dict[str, Any] = {"reports": [self._render(r) for r in page]}
        if start + size < len(reports):
            body["nextToken"] = self._tokens.issue(call.seller, call.op, tuple(sorted(filters.items())), start + size, self._config().token_ttl)
        return 200, body

    def get(self, call: Call) -> tuple[int, Any]:
        return 200, self._render(self._get(call.seller, call.path["reportId"]))

    def cancel(self, call: Call) -> tuple[int, Any]:
        report = self._get(call.seller, call.path["reportId"])
        status = self._status(report)
        if status != "IN_QUEUE":
            raise invalid(f"Report {report.report_id} cannot be cancelled: its processingStatus is {status}; only IN_QUEUE reports can be cancelled.")
        report.cancelled_at = self._clock()
        return 200, None

    def document(self, call: Call) -> tuple[int, Any]:
        doc_id = call.path["reportDocumentId"]
        doc = self._documents.get(doc_id)
        if doc is None or doc.seller != call.seller:
            raise ApiError(404, "NotFound", f"Report document {doc_id} not found.")
        encoding = "gzip" if doc.gzipped and call.one("enableContentEncodingUrlHeader") == "true" else ""
        body: dict[str, Any] = {"reportDocumentId": doc_id, "url": self._signed_url(call.base_url, doc_id, encoding)}
        if doc.gzipped:
            body["compressionAlgorithm"] = "GZIP"
        return 200, body

    # ------------------------------------------------------------------ the pre-signed URL

    def _signature(self, doc_id: str, amz_date: str, expires: str, encoding: str) -> str:
        message = "\n".join((doc_id, amz_date, expires, encoding)).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def _signed_url(self, base_url: str, doc_id: str, encoding: str) -> str:
        issued = from_epoch(self._clock())
        amz_date, expires = issued.strftime("%Y%m%dT%H%M%SZ"), str(int(self._config().url_ttl))
        credential = quote(f"SANDBOXKEY/{issued:%Y%m%d}/us-east-1/s3/aws4_request", safe="")
        query = (
            f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date={amz_date}&X-Amz-SignedHeaders=host&X-Amz-Expires={expires}"
            f"&X-Amz-Credential={credential}"
        )
        if encoding:
            query += f"&response-content-encoding={encoding}"
        query += f"&X-Amz-Signature={self._signature(doc_id, amz_date, expires, encoding)}"
        return f"{base_url.rstrip('/')}/_documents/{quote(doc_id, safe='')}?{query}"

    def download(self, doc_id: str, params: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
        """The answer of the storage host to a GET of a document URL."""
        with self._lock:
            doc = self._documents.get(doc_id)
            amz_date, expires = params.get("X-Amz-Date", ""), params.get("X-Amz-Expires", "")
            encoding = params.get("response-content-encoding", "")
            expected = self._signature(doc_id, amz_date, expires, encoding)
            if not hmac.compare_digest(expected, params.get("X-Amz-Signature", "")):
                self.counters.refused_downloads += 1
                return _s3_error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided.")
            issued = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            deadline = issued + timedelta(seconds=int(expires))
            now = from_epoch(self._clock())
            if now > deadline:
                self.counters.expired_downloads += 1
                extra = (
                    f"<X-Amz-Expires>{expires}</X-Amz-Expires><Expires>{deadline:%Y-%m-%dT%H:%M:%SZ}</Expires>"
                    f"<ServerTime>{now:%Y-%m-%dT%H:%M:%SZ}</ServerTime>"
                )
                return _s3_error(403, "AccessDenied", "Request has expired", extra)
            if doc is None:
                return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
            self.counters.downloads += 1
            headers = {"content-type": doc.content_type if not doc.gzipped or encoding else "application/octet-stream"}
            if encoding:
                headers["content-encoding"] = encoding
            return 200, headers, doc.content

    # ------------------------------------------------------------------ state

    def _get(self, seller: str, report_id: str) -> _Report:
        report = self._reports.get(seller, {}).get(report_id)
        if report is None:
            raise ApiError(404, "NotFound", f"Report {report_id} not found.")
        return report

    def _take_forced(self, report_type: str) -> str | None:
        for i, (outcome, only) in enumerate(self._forced):
            if only in (None, report_type):
                del self._forced[i]
                return outcome
        return None

    def _cooling_down(self, report: _Report, cooldown: float) -> bool:
        if cooldown <= 0:
            return False
        earlier = self._reports.get(report.seller, {}).values()
        return any(
            r.report_type == report.report_type and r.cancelled_at is None and report.created - r.created < cooldown
            for r in earlier
        )

    def _status(self, report: _Report) -> str:
        if report.cancelled_at is not None:
            return "CANCELLED"
        now = self._clock()
        if now < report.created + report.queue_s:
            return "IN_QUEUE"
        if now < report.created + report.queue_s + report.processing_s:
            return "IN_PROGRESS"
        if report.outcome is None:
            self._complete(report)
        assert report.outcome is not None
        return report.outcome

    def _complete(self, report: _Report) -> None:
        if report.forced == "FATAL":
            error = orjson.dumps({"errorDetails": FATAL_DETAILS})
            report.document_id = self._store(report.seller, error, False, "application/json")
            report.outcome = "FATAL"
            return
        content = b"" if report.forced == "CANCELLED" else self._content(report)
        if not content:
            report.outcome = "CANCELLED"  # Amazon cancels a report with no data to return
            return
        report.document_id = self._store(report.seller, content, report.report_type in self._config().gzip_types, "text/plain;charset=UTF-8")
        report.outcome = "DONE"

    def _content(self, report: _Report) -> bytes:
        if report.report_type == REIMBURSEMENTS:
            rows = self.world.reimbursement_rows(report.seller, report.start, report.end)
            return _tsv(REIMBURSEMENT_COLUMNS, rows, quoted=False) if rows else b""
        rows = self.world.ledger_rows(report.seller, report.start, report.end)
        event_type = report.options.get("eventType")
        if event_type:
            rows = [r for r in rows if r["Event Type"] == event_type]
        return _tsv(LEDGER_COLUMNS, rows, quoted=True) if rows else b""

    def _store(self, seller: str, content: bytes, gzipped: bool, content_type: str) -> str:
        doc_id = f"amzn1.spdoc.1.4.na.{uuid.UUID(int=self._ids.rng.getrandbits(128), version=4)}"
        stored = gzip.compress(content, mtime=0) if gzipped else content
        self._documents[doc_id] = _Document(seller, stored, gzipped, content_type)
        return doc_id

    def _matching(self, query: Call) -> list[_Report]:
        types = query.array("reportTypes", max_items=10)
        if not types:
            raise invalid("Either reportTypes or nextToken is required.")
        statuses = query.array("processingStatuses")
        if statuses and set(statuses) - set(PROCESSING_STATUSES):
            raise invalid("Invalid input", f"Invalid processingStatuses: {sorted(set(statuses) - set(PROCESSING_STATUSES))}")
        marketplaces = set(query.array("marketplaceIds", max_items=10) or ())
        now = from_epoch(self._clock())
        since = max(query.time("createdSince") or now - RETENTION, now - RETENTION)
        until = query.time("createdUntil") or now
        found = [
            r for r in self._reports.get(query.seller, {}).values()
            if r.report_type in types
            and since <= from_epoch(r.created) <= until
            and (not marketplaces or marketplaces & set(r.marketplace_ids))
            and (not statuses or self._status(r) in statuses)
        ]
        return sorted(found, key=lambda r: (-r.created, r.report_id))

    def _render(self, report: _Report) -> dict[str, Any]:
        status = self._status(report)
        out: dict[str, Any] = {
            "reportId": report.report_id,
            "reportType": report.report_type,
            "marketplaceIds": list(report.marketplace_ids),
            "dataStartTime": fmt_ms(report.start),
            "dataEndTime": fmt_ms(report.end),
            "createdTime": fmt_ms(from_epoch(report.created)),
            "processingStatus": status,
        }
        if status != "IN_QUEUE" and report.cancelled_at is None:
            out["processingStartTime"] = fmt_ms(from_epoch(report.created + report.queue_s))
        if status in ("DONE", "FATAL") or (status == "CANCELLED" and report.cancelled_at is None):
            out["processingEndTime"] = fmt_ms(from_epoch(report.created + report.queue_s + report.processing_s))
        if report.document_id is not None:
            out["reportDocumentId"] = report.document_id
        return out


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        spec = orjson.loads(body or b"null")
    except orjson.JSONDecodeError:
        raise invalid("The request body is not valid JSON.") from None
    if not isinstance(spec, dict):
        raise invalid("The request body must be a CreateReportSpecification object.")
    return spec


def _specification(spec: dict[str, Any], seller_marketplaces: tuple[str, ...]) -> tuple[str, list[str], dict[str, str]]:
    report_type = spec.get("reportType")
    if not isinstance(report_type, str) or not report_type:
        raise invalid("Missing required field: reportType")
    if report_type not in REPORT_TYPES:
        raise invalid(f"Invalid reportType: {report_type}. The sandbox serves {', '.join(REPORT_TYPES)}.")
    marketplaces = spec.get("marketplaceIds")
    if not isinstance(marketplaces, list) or not 1 <= len(marketplaces) <= 25 or not all(isinstance(m, str) for m in marketplaces):
        raise invalid("marketplaceIds must list 1 to 25 marketplace ids.")
    foreign = sorted(set(marketplaces) - set(seller_marketplaces))
    if foreign:
        raise invalid(f"Invalid marketplaceIds for this seller: {foreign}")
    options = spec.get("reportOptions") or {}
    if not isinstance(options, dict) or not all(isinstance(v, str) for v in options.values()):
        raise invalid("reportOptions must map strings to strings.")
    if report_type == LEDGER and options.get("eventType") not in (None, *LEDGER_EVENT_TYPES):
        raise invalid(f"Invalid eventType: {options['eventType']}")
    return report_type, list(marketplaces), options


def _data_window(spec: dict[str, Any], now: datetime) -> tuple[datetime, datetime]:
    """dataStartTime/dataEndTime: both default to now and must not be in the future."""
    def at(name: str) -> datetime:
        raw = spec.get(name)
        if raw is None:
            return now
        if not isinstance(raw, str):
            raise invalid(f"{name} must be an ISO 8601 date-time string.")
        return parse_time(name, raw)

    start, end = at("dataStartTime"), at("dataEndTime")
    if start > now or end > now:
        raise invalid("dataStartTime and dataEndTime must be prior to or equal to the current date and time.")
    if start > end:
        raise invalid("dataStartTime must be before dataEndTime.")
    return start, end


def _tsv(columns: tuple[str, ...], rows: list[dict[str, str]], *, quoted: bool) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_ALL if quoted else csv.QUOTE_NONE, escapechar=None if quoted else "\\")
    writer.writerow(columns)
    writer.writerows([r[c] for c in columns] for r in rows)
    return out.getvalue().encode("utf-8")


def _s3_error(status: int, code: str, message: str, extra: str = "") -> tuple[int, dict[str, str], bytes]:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>{extra}"
        f"<RequestId>{secrets.token_hex(8).upper()}</RequestId><HostId>{secrets.token_urlsafe(48)}</HostId></Error>"
    )
    return status, {"content-type": "application/xml"}, body.encode()
