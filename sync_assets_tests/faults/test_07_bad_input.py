"""Fault 7: bad input - invalid settings, unknown partitions and datasets, non-JSON or wrong-typed
payloads.

Invariant 8 (bad configuration fails at load or at the first step with a message naming the
setting) and "never a silently coerced row": every bad input ends in an error that names its
cause (the setting, the field and page, the partition), never a bare traceback of some inner
library, never a partial write, never a secret in the message.

Settings are tried through the real CLI (`dagster asset materialize`, in parallel) and in process;
payloads, URLs and frames are property-based (hypothesis, derandomized so `make test` is
reproducible) on `rows_to_frame`, the datasets' `transform`s (through the resource's page parser),
`psycopg2_url`, `EsiResource(base_url=...)` and the writer (what the frame builder accepts must
be storable, exactly).
"""

from __future__ import annotations

import math
import secrets
import socket
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import dagster as dg
import orjson
import pandas as pd
import pydantic
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from sync_assets.apis.esi import EsiResource
from sync_assets.core.errors import MalformedPayload
from sync_assets.fetch.frames import rows_to_frame
from sync_assets.core.snapshot import Outcome, Snapshot, Validators
from sync_assets.core.catalog import DATASETS_BY_KEY
from sync_assets.apis.esi.datasets import MARKET_ORDERS, MARKET_PRICES
from sync_assets.core.datasets import ColumnType, Dataset
from sync_assets.apis.esi import datasets as declared
from sync_assets.apis.esi.sandbox.esi import EsiSandbox
from sync_assets.apis.esi.sandbox.server import serve_in_thread
from sync_assets.warehouse import DatabaseConfigError, PostgresWarehouse
from sync_assets.db.urls import psycopg2_url

from .conftest import FaultReport, Haystacks
from .helpers import FORGE, Observer, Proc, Runner, clean_env, dagster_materialize, failure_text, scaled, state_row, table_digest
from .proxy import NUL_BYTE, FaultProxy

PASSWORD = f"pw{secrets.token_hex(8)}"  # never to appear in a message
EXAMPLES = scaled(150)
# no shrinking in `make test` (it can take minutes); each bug found is also pinned by a minimal explicit case
PHASES = [Phase.explicit, Phase.generate] + ([Phase.shrink] if scaled(1) > 1 else [])
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, phases=PHASES,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


def _entry(fault_report: FaultReport, test: str, injection: str):
    entry = fault_report.entry("7", "Bad input: settings, names, payloads", invariant="8", main="", injection=injection)
    entry.tests.append(f"test_07_bad_input.py::{test}")
    return entry


# --- settings through the real CLI ---------------------------------------------------------------

CLI_CASES = {
    # name: (environment overrides, --select, --partition, words the output must contain)
    "SYNC_ASSETS_DATABASE_URL is a MySQL URL": (
        {"SYNC_ASSETS_DATABASE_URL": f"mysql://sync:{PASSWORD}@db.example/sync"}, "esi/market_orders", FORGE,
        ["SYNC_ASSETS_DATABASE_URL", "PostgreSQL"]),
    "SYNC_ASSETS_DATABASE_URL has a non-numeric port": (
        {"SYNC_ASSETS_DATABASE_URL": f"postgresql://sync:{PASSWORD}@db.example:fivefour/sync"}, "esi/market_orders", FORGE,
        ["SYNC_ASSETS_DATABASE_URL"]),
    "SYNC_ASSETS_ESI_URL is not http(s)": (
        {"SYNC_ASSETS_ESI_URL": "ftp://esi.example"}, "esi/market_orders", FORGE, ["SYNC_ASSETS_ESI_URL"]),
    "unknown partition": ({}, "esi/market_orders", "99999999", ["99999999"]),
}


@pytest.fixture(scope="module")
def cli_outputs(tmp_path_factory: pytest.TempPathFactory, fault_databases: Any, haystacks: Haystacks) -> Iterator[dict[str, Any]]:
    """Every CLI case at once (each is a process start-up, mostly waiting on imports)."""
    base = tmp_path_factory.mktemp("badcli")
    haystacks.paths.append(base)
    db_url = fault_databases("badcli")
    procs: dict[str, Proc] = {}
    try:
        for i, (name, (env, select, partition, _)) in enumerate(CLI_CASES.items()):
            home = base / f"home{i}"
            home.mkdir()
            full = clean_env(SYNC_ASSETS_DATABASE_URL=db_url, SYNC_ASSETS_ESI_URL="http://127.0.0.1:9", DAGSTER_HOME=str(home))
            full.update(env)
            procs[name] = dagster_materialize(full, base / f"case{i}.log", partition=partition, select=select)
        outputs = {}
        for name, proc in procs.items():
            code = proc.wait(240)
            outputs[name] = (code, proc.output())
            haystacks.texts.append(outputs[name][1])
        observer = Observer(db_url)
        rows = observer.conn.exec_driver_sql("SELECT to_regclass('esi.market_orders')").scalar()
        observer.close()
        yield {"outputs": outputs, "table_exists": rows is not None}
    finally:
        for proc in procs.values():
            proc.close()


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_bad_settings_and_names_fail_through_the_cli_naming_the_cause(case: str, cli_outputs: dict[str, Any],
                                                                      fault_report: FaultReport) -> None:
    entry = _entry(fault_report, f"test_bad_settings_and_names_fail_through_the_cli_naming_the_cause[{case}]",
                   "bad settings and unknown names given to `dagster asset materialize` (subprocess);")
    code, output = cli_outputs["outputs"][case]
    words = CLI_CASES[case][3]
    messages = _without_source_lines(output)  # the source of a traceback would name the setting anyway
    named = all(w in messages for w in words)
    leaked = PASSWORD in output
    entry.tally("CLI: bad setting / unknown name").add(
        f"{case}: " + ("fails naming the cause" if named else "FAILS WITHOUT NAMING THE CAUSE")
        + ("; PASSWORD IN THE OUTPUT" if leaked else ""))
    if not named:
        errors = [line for line in messages.splitlines() if "Error" in line and not line.startswith(" ")]
        entry.notes.append(f"CLI, {case}: `{(errors[-1] if errors else output.strip().splitlines()[-1])[:200]}`")
    assert code not in (0, None), "the run did not fail"
    assert named, f"the output does not name {words}:\n{output[-3000:]}"
    assert not leaked, "the password is in the output"
    assert not cli_outputs["table_exists"], "a run with bad input created or wrote the table"


def _without_source_lines(output: str) -> str:
    """The output without the `File "...", line N` lines of tracebacks and the source lines they quote."""
    kept, skip = [], False
    for line in output.splitlines():
        if line.lstrip().startswith('File "'):
            skip = True
            continue
        if skip or set(line.strip()) <= {"^", "~"}:
            skip = False
            continue
        kept.append(line)
    return "\n".join(kept)


# --- settings in process (no start-up cost) -----------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed when the socket is


def test_an_unset_or_unreachable_database_fails_at_the_first_step_naming_it(fault_report: FaultReport,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    entry = _entry(fault_report, "test_an_unset_or_unreachable_database_fails_at_the_first_step_naming_it",
                   "SYNC_ASSETS_DATABASE_URL unset or pointing at a closed port (in process);")
    from sync_assets.definitions import build_definitions

    monkeypatch.setenv("SYNC_ASSETS_ESI_URL", f"http://127.0.0.1:{_closed_port()}")
    for label, value in (("unset", None), ("unreachable", f"postgresql://sync:{PASSWORD}@127.0.0.1:{_closed_port()}/sync")):
        if value is None:
            monkeypatch.delenv("SYNC_ASSETS_DATABASE_URL", raising=False)
        else:
            monkeypatch.setenv("SYNC_ASSETS_DATABASE_URL", value)
        defs = build_definitions()
        asset = next(a for a in defs.assets if isinstance(a, dg.AssetsDefinition) and a.key == dg.AssetKey(["esi", "market_orders"]))
        try:
            result = dg.materialize([asset], partition_key=FORGE, resources=defs.resources, raise_on_error=False)
            message = failure_text(result)
        except dg.DagsterInvalidConfigError as exc:  # an unset EnvVar fails before the run starts
            message = str(exc)
        assert "SYNC_ASSETS_DATABASE_URL" in message or "data database" in message, message[:2000]
        assert PASSWORD not in message
        entry.tally("database setting").add(f"{label}: fails naming it, no password")


def test_unknown_dataset_and_partition_names_are_refused_naming_them(fault_report: FaultReport) -> None:
    from sync_assets.core.requests import plan_requests
    from sync_assets.core.catalog import dataset_for_asset_key

    entry = _entry(fault_report, "test_unknown_dataset_and_partition_names_are_refused_naming_them",
                   "unknown dataset names and partition keys (in process);")
    with pytest.raises(KeyError, match="esi.no_such_dataset"):
        dataset_for_asset_key(["esi", "no_such_dataset"])
    cases = [(MARKET_ORDERS, "99999999", "99999999"), (MARKET_ORDERS, None, "partition key is required"),
             (declared.CORPORATION_ASSETS, "not-a-corporation", "not-a-corporation")]
    for dataset, key, words in cases:
        with pytest.raises(ValueError, match=words):
            plan_requests(dataset, key)
    entry.tally("unknown names (in process)").add("refused naming the dataset / partition", 1 + len(cases))


def test_an_unreachable_esi_fails_naming_the_host_or_the_setting(fault_db: str, fault_report: FaultReport) -> None:
    entry = _entry(fault_report, "test_an_unreachable_esi_fails_naming_the_host_or_the_setting",
                   "SYNC_ASSETS_ESI_URL pointing at a closed port;")
    port = _closed_port()
    runner = Runner(f"http://127.0.0.1:{port}", fault_db, max_attempts=2)
    result = runner.sync()
    assert not result.success
    message = failure_text(result)
    cause = [line for line in message.splitlines() if line and not line.startswith(("\t", " ", "dagster._core"))][-1]
    named = f"127.0.0.1:{port}" in message or "SYNC_ASSETS_ESI_URL" in message
    entry.tally("ESI unreachable").add("fails naming the host/setting" if named else "BUG: fails with a bare transport error")
    if not named:
        entry.notes.append(f"ESI unreachable: the run fails with `{cause[:200]}` (no host, no setting)")
    assert named, f"the failure names neither the ESI host nor SYNC_ASSETS_ESI_URL: {cause}"


# --- payloads: rows_to_frame and the datasets' transforms ---------------------------------------------

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=INT64_MIN, max_value=2**64 - 1),  # what orjson parses as int
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                           max_leaves=5)
EDGE = st.sampled_from(["", " ", True, False, 2**63, 2**64 - 1, INT64_MIN, 0.5, "12", [1], {"a": 1}, None, "2026-13-45", "\x00"])
iso_times = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(timezone.utc)).map(
    lambda d: f"{d.year:04d}-{d:%m-%dT%H:%M:%S}" + (f".{d.microsecond:06d}" if d.microsecond else "") + "Z")
iso_dates = st.dates().map(lambda d: d.isoformat())


def _valid(column: Any) -> st.SearchStrategy:
    return {
        ColumnType.INT64: st.integers(INT64_MIN, INT64_MAX),
        ColumnType.FLOAT64: st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53),
        ColumnType.BOOL: st.booleans(),
        ColumnType.STRING: st.text(st.characters(blacklist_characters="\x00"), max_size=12),  # NUL: its own test
        ColumnType.TIMESTAMP: iso_times,
        ColumnType.DATE: iso_dates,
        ColumnType.JSON: json_values,
    }[column.type]


def _rows(dataset: Dataset, valid_only: bool = False) -> st.SearchStrategy:
    """Lists of rows of well-typed values (optional fields sometimes absent); unless `valid_only`,
    then one or two fields of some rows replaced by an edge value or any JSON."""
    required = {c.name: _valid(c) for c in dataset.columns if c.required}
    optional = {c.name: _valid(c) for c in dataset.columns if not c.required}
    rows = st.lists(st.fixed_dictionaries(required, optional=optional), max_size=4)
    if valid_only:
        return rows
    names = [c.name for c in dataset.columns]
    mutations = st.lists(st.tuples(st.integers(0, 3), st.sampled_from(names), st.one_of(EDGE, EDGE, json_values)), min_size=1, max_size=2)

    def mutate(args: tuple[list[dict], list[tuple[int, str, Any]]]) -> list[dict]:
        rows, changes = args
        for index, name, value in changes:
            if rows:
                rows[index % len(rows)][name] = value
        return rows

    return st.tuples(rows, mutations).map(mutate)


def _same(value: Any, got: Any, column: Any) -> bool:
    """Is `got` (a frame cell) exactly the JSON `value`, for the column's type?"""
    if value is None:
        return not column.required and (got is None or got is pd.NA or (isinstance(got, float) and math.isnan(got)) or pd.isna(got))
    kind = column.type
    if kind is ColumnType.INT64:
        return type(value) is int and int(got) == value
    if kind is ColumnType.FLOAT64:
        return type(value) in (int, float) and float(got) == float(value)
    if kind is ColumnType.BOOL:
        return type(value) is bool and bool(got) is value
    if kind is ColumnType.STRING:
        return type(value) is str and got == value
    if kind is ColumnType.JSON:
        return got == orjson.dumps(value).decode()
    if kind in (ColumnType.TIMESTAMP, ColumnType.DATE):
        return type(value) is str and not pd.isna(got)
    return False


def _check_frame(rows: Any, dataset: Dataset) -> str:
    """rows_to_frame either builds exactly the rows given, or refuses naming where; else AssertionError."""
    where = f"{dataset.key} page 7"
    try:
        frame = rows_to_frame(rows, dataset.columns, where)
    except MalformedPayload as exc:
        assert str(exc).startswith(where), f"the error does not say where: {exc}"
        return "refused with MalformedPayload naming route and page"
    assert list(frame.columns) == [c.name for c in dataset.columns]
    assert len(frame) == len(rows)
    for column in dataset.columns:
        assert str(frame[column.name].dtype) in (column.pandas_dtype, column.numpy_dtype), (column.name, frame[column.name].dtype)
        for i, row in enumerate(rows):
            value, got = row.get(column.name), frame[column.name].iloc[i]
            assert _same(value, got, column), (
                f"silently coerced: field {column.name!r} ({column.type.value}, {'required' if column.required else 'optional'}) "
                f"of row {i}: JSON {value!r} became {got!r}")
    return "accepted, every value exact"


FRAME_DATASETS = [MARKET_ORDERS, MARKET_PRICES, declared.INDUSTRY_JOBS, declared.MINING_OBSERVERS, declared.WALLET_JOURNAL]
OUTCOMES: dict[str, dict[str, int]] = {}


@pytest.mark.parametrize("dataset", FRAME_DATASETS, ids=lambda d: d.key)
def test_rows_to_frame_builds_exactly_what_it_was_given_or_refuses_naming_where(dataset: Dataset, fault_report: FaultReport) -> None:
    entry = _entry(fault_report, f"test_rows_to_frame_builds_exactly_what_it_was_given_or_refuses_naming_where[{dataset.key}]",
                   f"hypothesis: {EXAMPLES} payloads per dataset (JSON arrays of rows mixing valid values, wrong types, "
                   "nulls, huge integers, booleans, nested values, empty strings) into `rows_to_frame`;")
    tally = entry.tally(f"rows_to_frame payloads ({dataset.key})")

    @PROPERTY
    @given(rows=_rows(dataset) | json_values)
    def check(rows: Any) -> None:
        tally.add(_check_frame(rows, dataset))

    try:
        check()
    except BaseException:
        tally.add("FAILED: coerced silently or raised without context")
        raise


# each a minimal case of a bug the property finds: a payload rows_to_frame must refuse, naming the field
SILENT = {
    "uint64 above int64 max wraps to a negative id": (MARKET_ORDERS, "order_id", 2**63),
    "true among integers becomes 1": (MARKET_ORDERS, "type_id", True),
    "true among floats becomes 1.0": (MARKET_ORDERS, "price", True),
    "empty string in a required timestamp becomes NaT": (MARKET_ORDERS, "issued", ""),
    "a list in an integer field on every row": (MARKET_ORDERS, "volume_total", [5]),
    "a NUL character (PostgreSQL cannot store it)": (MARKET_ORDERS, "range", "station\x00"),
}
GOOD_ORDER = {"order_id": 1, "type_id": 34, "is_buy_order": False, "price": 5.5, "volume_remain": 1, "volume_total": 2,
              "min_volume": 1, "range": "station", "location_id": 60003760, "system_id": 30000142,
              "issued": "2026-11-20T08:14:03Z", "duration": 90}


@pytest.mark.parametrize("case", list(SILENT))
def test_rows_to_frame_refuses_what_it_cannot_keep_exactly(case: str, fault_report: FaultReport) -> None:
    entry = _entry(fault_report, f"test_rows_to_frame_refuses_what_it_cannot_keep_exactly[{case}]",
                   "explicit minimal payloads for each coercion the property found;")
    dataset, field, value = SILENT[case]
    bad = [{**GOOD_ORDER, "order_id": 2, field: value}]
    if field != "volume_total":
        bad = [dict(GOOD_ORDER)] + bad  # a good row first: the bad value hides among good ones
    else:
        bad = [dict(GOOD_ORDER, order_id=3, volume_total=[5]), dict(GOOD_ORDER, order_id=4, volume_total=[6])]
    where = "esi.market_orders[10000002] page 3"
    try:
        rows_to_frame(bad, dataset.columns, where)
        outcome = "BUG: accepted"
    except MalformedPayload as exc:
        outcome = "refused naming the field" if field in str(exc) and str(exc).startswith(where) else f"refused without naming it: {exc}"
    except Exception as exc:  # noqa: BLE001 - the wrong exception type is the finding
        outcome = f"BUG: {type(exc).__name__}: {str(exc)[:120]} (no route, page or field)"
    entry.tally("coercions rows_to_frame must refuse").add(f"{case}: {outcome}")
    assert outcome == "refused naming the field", outcome


@pytest.mark.parametrize("dataset", [d for d in DATASETS_BY_KEY.values() if d.transform is not None], ids=lambda d: d.key)
def test_dataset_transforms_refuse_any_wrong_shape_naming_where(dataset: Dataset, fault_report: FaultReport) -> None:
    from sync_assets.core.requests import SliceRequest
    from sync_assets.fetch.resource import _page_parser  # the resource's own page parser: transform + rows_to_frame

    entry = _entry(fault_report, f"test_dataset_transforms_refuse_any_wrong_shape_naming_where[{dataset.key}]",
                   f"hypothesis: {EXAMPLES} arbitrary JSON payloads per dataset with a `transform`;")
    tally = entry.tally(f"transform payloads ({dataset.key})")
    request = SliceRequest(path=dataset.route, state_key="98000001", context={"corporation_id": 98000001})
    parse = _page_parser(dataset, request, f"{dataset.key}[98000001]")

    @PROPERTY
    @given(payload=json_values | st.lists(json_values, max_size=3) | st.lists(st.integers(INT64_MIN, INT64_MAX), max_size=4))
    @example(payload=[[1], [2]])
    def check(payload: Any) -> None:
        try:
            parse(4, payload)
            tally.add("accepted")
        except MalformedPayload as exc:
            assert str(exc).startswith(f"{dataset.key}[98000001] page 4"), str(exc)
            tally.add("refused with MalformedPayload naming route and page")

    try:
        check()
    except BaseException:
        tally.add("FAILED: an exception without route/page context")
        raise


# --- settings: property-based --------------------------------------------------------------------------

url_parts = st.fixed_dictionaries({
    "scheme": st.sampled_from(["postgresql", "postgresql+psycopg2", "postgres", "postgresql+psycopg", "mysql", "sqlite", "http", ""]),
    "host": st.sampled_from(["db", "127.0.0.1", "[::1]", "", "db.example.com", "a b"]),
    "port": st.sampled_from(["", ":5432", ":0", ":99999", ":abc", ":", ":-1"]),
    "db": st.sampled_from(["/sync", "", "/", "/a/b", "/%zz"]),
    "query": st.sampled_from(["", "?host=/tmp", "?sslmode=require", "?x=%", "?=", "?a"]),
})
urlish = url_parts.map(lambda p: f"{p['scheme']}://sync:{PASSWORD}@{p['host']}{p['port']}{p['db']}{p['query']}")


def test_psycopg2_url_normalises_or_refuses_naming_the_setting(fault_report: FaultReport) -> None:
    entry = _entry(fault_report, "test_psycopg2_url_normalises_or_refuses_naming_the_setting",
                   f"hypothesis: {EXAMPLES} database URLs (structured and arbitrary text) into `psycopg2_url`;")
    tally = entry.tally("psycopg2_url inputs")

    @PROPERTY
    @given(value=urlish | st.text(max_size=40))
    @example(value=f"postgresql://sync:{PASSWORD}@db:abc/sync")
    def check(value: str) -> None:
        try:
            out = psycopg2_url(value, "SYNC_ASSETS_DATABASE_URL")
        except DatabaseConfigError as exc:
            assert "SYNC_ASSETS_DATABASE_URL" in str(exc) and PASSWORD not in str(exc), str(exc)
            tally.add("refused naming SYNC_ASSETS_DATABASE_URL")
            return
        except Exception as exc:
            tally.add(f"BUG: {type(exc).__name__} without the setting")
            raise AssertionError(f"psycopg2_url({value!r}) raised {type(exc).__name__}: {exc} (no setting named)") from exc
        assert out.startswith("postgresql+psycopg2://")
        tally.add("accepted, normalised to postgresql+psycopg2://")

    check()


esi_urls = st.builds(lambda s, h, p, path: f"{s}{h}{p}{path}",
                     st.sampled_from(["http://", "https://", "ftp://", "", "http:/", "HTTPS://"]),
                     st.sampled_from(["esi.evetech.net", "127.0.0.1", "[::1]", "", "a b", "é.example", "[::1"]),
                     st.sampled_from(["", ":8080", ":abc", ":99999", ":"]),
                     st.sampled_from(["", "/", "/latest", "/\ud800", "/ x"]))


def test_esi_resource_accepts_usable_urls_or_refuses_naming_the_setting(fault_report: FaultReport) -> None:
    entry = _entry(fault_report, "test_esi_resource_accepts_usable_urls_or_refuses_naming_the_setting",
                   f"hypothesis: {EXAMPLES} ESI base URLs into `EsiResource(base_url=...)`.")
    tally = entry.tally("EsiResource(base_url=...) inputs")

    @PROPERTY
    @given(value=esi_urls | st.text(max_size=30))
    @example(value="http://esi.example:abc")
    def check(value: str) -> None:
        try:
            resource = EsiResource(base_url=value)
        except pydantic.ValidationError as exc:
            named = "SYNC_ASSETS_ESI_URL" in str(exc)
            tally.add("refused naming SYNC_ASSETS_ESI_URL" if named else "refused WITHOUT naming the setting")
            assert named, f"EsiResource(base_url={value!r}): {exc}"
            return
        except Exception as exc:
            tally.add(f"BUG: {type(exc).__module__}.{type(exc).__name__} escapes validation")
            raise AssertionError(f"EsiResource(base_url={value!r}) raised {type(exc).__module__}.{type(exc).__name__}: {exc}") from exc
        import httpx

        url = httpx.URL(resource.base_url)
        assert url.scheme in ("http", "https") and url.host
        tally.add("accepted")

    check()


# --- what the frame builder accepts, the writer stores exactly ---------------------------------------

def test_every_frame_rows_to_frame_accepts_is_stored_exactly(fault_db: str, fault_report: FaultReport) -> None:
    entry = _entry(fault_report, "test_every_frame_rows_to_frame_accepts_is_stored_exactly",
                   f"hypothesis: {scaled(40)} snapshots of well-typed rows (any text, extreme floats and integers, any "
                   "timestamp) through `rows_to_frame` and the writer into PostgreSQL and back;")
    tally = entry.tally("accepted frames written and read back")
    warehouse = PostgresWarehouse(database_url=fault_db)
    clock = [datetime(2026, 1, 1, tzinfo=timezone.utc)]

    def snapshot(dataset: Dataset, rows: list[dict], region: int | None) -> Snapshot:
        frame = rows_to_frame(rows, dataset.columns, "w")
        context = {}
        if region is not None:
            frame.insert(0, "region_id", pd.Series([region] * len(frame), dtype="int64"))
            context = {"region_id": region}
        frame = frame.drop_duplicates(subset=list(dataset.primary_key), keep="last", ignore_index=True)
        clock[0] += timedelta(minutes=5)
        return Snapshot(dataset.key, str(region or ""), Outcome.CHANGED, Validators(('"e"',), clock[0], None), frame, context=context)

    @settings(max_examples=scaled(40), deadline=None, derandomize=True, database=None, phases=PHASES,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(orders=_rows(MARKET_ORDERS, valid_only=True), prices=_rows(MARKET_PRICES, valid_only=True))
    def check(orders: list[dict], prices: list[dict]) -> None:
        for dataset, rows, region in ((MARKET_ORDERS, orders, int(FORGE)), (MARKET_PRICES, prices, None)):
            snap = snapshot(dataset, rows, region)
            try:
                warehouse.write_snapshot(dataset, snap)
            except Exception as exc:
                tally.add(f"BUG: accepted by rows_to_frame, refused by PostgreSQL ({type(exc).__name__})")
                raise AssertionError(f"{dataset.key}: a frame rows_to_frame accepted cannot be stored: "
                                     f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
            stored = warehouse.read_table(dataset, [str(region)] if region else None)
            expected = snap.frame.sort_values(list(dataset.primary_key)).reset_index(drop=True)
            for column in expected.columns:
                left, right = stored[column].tolist(), expected[column].tolist()
                assert [None if pd.isna(x) else x for x in left] == [None if pd.isna(x) else x for x in right], (
                    f"{dataset.key}.{column} changed on the way through PostgreSQL")
            tally.add(f"{dataset.key}: stored and read back exactly")

    check()


def test_a_string_with_a_nul_character_is_refused_by_rows_to_frame_or_stored(fault_db: str, fault_report: FaultReport) -> None:
    """Valid JSON ("\\u0000"), accepted by rows_to_frame, but PostgreSQL text cannot hold NUL."""
    entry = _entry(fault_report, "test_a_string_with_a_nul_character_is_refused_by_rows_to_frame_or_stored",
                   "a string field with a NUL character (valid JSON) through `rows_to_frame` and the writer;")
    warehouse = PostgresWarehouse(database_url=fault_db)
    rows = [dict(GOOD_ORDER, range="a\x00b")]
    try:
        frame = rows_to_frame(rows, MARKET_ORDERS.columns, "esi.market_orders[10000002] page 2")
    except MalformedPayload as exc:
        entry.tally("NUL character in a string").add("refused by rows_to_frame")
        assert "range" in str(exc)
        return
    frame.insert(0, "region_id", pd.Series([int(FORGE)], dtype="int64"))
    snap = Snapshot(MARKET_ORDERS.key, FORGE, Outcome.CHANGED, Validators(('"e"',), datetime(2026, 1, 1, tzinfo=timezone.utc), None),
                    frame, context={"region_id": int(FORGE)})
    try:
        warehouse.write_snapshot(MARKET_ORDERS, snap)
        stored = warehouse.read_table(MARKET_ORDERS, [FORGE])["range"].tolist() == ["a\x00b"]
        outcome = "stored exactly" if stored else "BUG: stored, but changed"
    except Exception as exc:  # noqa: BLE001 - the finding
        outcome = f"BUG: accepted by rows_to_frame, refused by PostgreSQL ({type(exc).__name__})"
    entry.tally("NUL character in a string").add(outcome)
    assert outcome == "stored exactly", outcome


def test_a_nul_byte_in_a_payload_fails_the_run_naming_the_field_and_writes_nothing(fault_db: str, fault_report: FaultReport) -> None:
    entry = _entry(fault_report, "test_a_nul_byte_in_a_payload_fails_the_run_naming_the_field_and_writes_nothing",
                   "end to end: a NUL character (valid JSON \\u0000) in a string field of one page;")
    sandbox = EsiSandbox(regions={int(FORGE): 6}, n_price_types=10, corporations={})
    with serve_in_thread(sandbox) as upstream:
        state = {"on": False}
        proxy = FaultProxy(upstream, lambda req: NUL_BYTE if state["on"] and req.page == 3 and "/orders" in req.path else None,
                           corrupt_field="range")
        with serve_in_thread(proxy, log_level="critical") as url:
            runner = Runner(url, fault_db)
            assert runner.sync().success
            sandbox.refresh("orders", int(FORGE))
            observer = Observer(fault_db)
            observer.conn.exec_driver_sql("UPDATE sync_assets.sync_state SET expires_at = now() - interval '1 second'")
            before = table_digest(observer.conn), state_row(observer.conn)
            state["on"] = True
            result = runner.sync()
            after = table_digest(observer.conn), state_row(observer.conn)
            observer.close()
    assert not result.success
    assert after == before, "a failed run changed the table"
    message = failure_text(result)
    cause = [line for line in message.splitlines() if line and not line.startswith(("\t", " ", "dagster._core"))][-1]
    named = "page 3" in message and "range" in message
    entry.tally("NUL byte in a string field").add(
        "nothing written; " + ("clear failure naming field and page" if named else "BUG: failure names neither field nor page"))
    if not named:
        entry.notes.append(f"NUL byte: the run fails in COPY with `{cause[:200]}`")
    assert named, f"the failure names neither the field nor the page: {cause}"
