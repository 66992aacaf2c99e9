"""Run the fault suite and write docs/RELIABILITY.md from its figures.

    .venv/bin/python -m sync_assets_tests.faults.report                 # run sync_assets_tests/faults, write the doc
    SYNC_ASSETS_FAULT_SCALE=5 .venv/bin/python -m sync_assets_tests.faults.report   # a longer soak
    .venv/bin/python -m sync_assets_tests.faults.report --from-json results.json    # render saved figures only

The tests record what they injected and what came out (sync_assets_tests/faults/conftest.py,
FaultReport); pytest writes that and every test's outcome to SYNC_ASSETS_FAULT_RESULTS at the end
of the session; this script renders it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "RELIABILITY.md"
COMMAND = ".venv/bin/python -m sync_assets_tests.faults.report"

# What each known-failing test shows, for the reader of the doc (the tests hold the evidence).
BUGS: dict[str, str] = {
    "test_partial_304s_from_a_stale_cache_never_mix_snapshots": (
        "An all-304 walk whose 304s carry no `Last-Modified` (RFC 9110 does not require it on a 304) stores "
        "`last_modified = NULL`: `EsiResource.fetch_snapshot` takes `responses[0].last_modified` even for NOT_MODIFIED. "
        "The DataVersion changes although nothing changed (invariant 7) and the writer's older-snapshot guard is off from "
        "then on. Fix: for an all-304 walk keep `previous.last_modified` (and `previous.page_etags[i]` where a 304 has no ETag)."),
    "test_requests_in_flight_are_counted_against_the_error_budget": (
        "The shared error budget admits a request whenever the last reported `X-ESI-Error-Limit-Remain` is above the floor "
        "(10); requests already in flight are not counted, so two runs (the `esi` pool allows 2) have 16 in flight and "
        "exhaust ESI's limit (420s) when they fail together. Fix: reserve one potential error per admitted request in "
        "`PostgresBudget.before_request` (remain - in_flight > floor, released in `after_response`), or keep the floor "
        "above the largest number of requests that can be in flight across processes."),
    "test_rows_to_frame_refuses_what_it_cannot_keep_exactly[uint64 above int64 max wraps to a negative id]": (
        "`rows_to_frame`: an integer in [2^63, 2^64) (orjson parses it as int) became a negative int64 (numpy uint64 -> "
        "int64 astype). Fix in `frames._column`: treat kind 'u' as foreign and check the range."),
    "test_rows_to_frame_refuses_what_it_cannot_keep_exactly[true among integers becomes 1]": (
        "`rows_to_frame`: `true` among integers became 1 (numpy's fast path). Fix: refuse bools in numeric columns."),
    "test_rows_to_frame_refuses_what_it_cannot_keep_exactly[true among floats becomes 1.0]": (
        "`rows_to_frame`: `true` among floats became 1.0. Fix: refuse bools in numeric columns."),
    "test_rows_to_frame_refuses_what_it_cannot_keep_exactly[empty string in a required timestamp becomes NaT]": (
        "`rows_to_frame`: `\"\"` in a required timestamp (or date) becomes NaT, stored as NULL: `pd.to_datetime` maps empty "
        "strings to NaT and `_check_values` counts only None as null. Fix in `frames._column`: after to_datetime, if the "
        "column is required and the result has NaT where the JSON had a value, raise MalformedPayload naming the field."),
    "test_rows_to_frame_refuses_what_it_cannot_keep_exactly[a list in an integer field on every row]": (
        "`rows_to_frame`: `[5]` in a numeric field on every row makes numpy build a 2-D int array that passes the dtype "
        "check; `pd.DataFrame` then raises a bare `ValueError: Per-column arrays must each be 1-dimensional` outside the "
        "try, with no route, page or field. Fix in `frames._column`: treat `array.ndim != 1` as foreign values."),
    "test_rows_to_frame_refuses_what_it_cannot_keep_exactly[a NUL character (PostgreSQL cannot store it)]": (
        "`rows_to_frame`: a string with NUL passes; PostgreSQL refuses it in COPY. Fix: refuse '\\x00' in text."),
    "test_rows_to_frame_refuses_what_it_cannot_keep_exactly": "`rows_to_frame` accepts a value it cannot keep exactly.",
    "test_rows_to_frame_builds_exactly_what_it_was_given_or_refuses_naming_where": (
        "The property finds the `rows_to_frame` bugs pinned by the explicit cases of "
        "`test_rows_to_frame_refuses_what_it_cannot_keep_exactly` (error line above: the one it hit first)."),
    "test_dataset_transforms_refuse_any_wrong_shape_naming_where": (
        "`corporation_members` payload `[[1], [2]]` (a list per id) escapes as a bare pandas ValueError "
        "(`Per-column arrays must each be 1-dimensional`), without route or page: the ndim check above fixes it."),
    "test_psycopg2_url_normalises_or_refuses_naming_the_setting": (
        "`psycopg2_url('postgresql://u:p@host:abc/db', ...)` raises a bare `ValueError: invalid literal for int()` "
        "(SQLAlchemy's make_url) that names no setting. Fix: catch ValueError next to ArgumentError in "
        "`warehouse/urls.py` (psycopg2_url and redacted) and raise DatabaseConfigError naming the setting."),
    "test_bad_settings_and_names_fail_through_the_cli_naming_the_cause": (
        "The same non-numeric port through the CLI: the run fails with `ValueError: invalid literal for int()`, "
        "naming neither SYNC_ASSETS_DATABASE_URL nor the value's problem."),
    "test_esi_resource_accepts_usable_urls_or_refuses_naming_the_setting": (
        "`EsiResource(base_url='http://host:abc')` raises `httpx.InvalidURL` straight through pydantic (not a "
        "ValidationError, no setting named); a URL with a lone surrogate gives a ValidationError without the setting. "
        "Fix: in `_check_base_url`, wrap `httpx.URL(value)` in try/except (httpx.InvalidURL, UnicodeError) and raise "
        "ValueError naming SYNC_ASSETS_ESI_URL."),
    "test_an_unreachable_esi_fails_naming_the_host_or_the_setting": (
        "When ESI cannot be reached the run fails with the bare `httpx.ConnectError: [Errno 111] Connection refused` "
        "(tenacity re-raises the transport error): no host, no route, no setting. Fix: in `ApiHttpClient.get_page`, "
        "after the last attempt wrap httpx.TransportError in an ApiError naming method, base URL + path and "
        "SYNC_ASSETS_ESI_URL."),
    "test_every_frame_rows_to_frame_accepts_is_stored_exactly": "(passes: floats, integers, timestamps and text round-trip exactly)",
    "test_a_string_with_a_nul_character_is_refused_by_rows_to_frame_or_stored": (
        "A string with a NUL character (valid JSON `\\u0000`) is accepted by `rows_to_frame` and then refused by "
        "PostgreSQL in COPY (`CharacterNotInRepertoire`): fixed by refusing it in rows_to_frame (see above)."),
    "test_a_nul_byte_in_a_payload_fails_the_run_naming_the_field_and_writes_nothing": (
        "End to end: the run fails in COPY with `invalid byte sequence for encoding \"UTF8\": 0x00 CONTEXT: COPY "
        "_sync_stage, line N` - nothing is written (good) but neither the field nor the page is named."),
    "test_a_finished_run_gives_its_database_connections_back": (
        "Every run's `EsiResource` builds a new budget engine (`EsiResource._budget`: `create_engine(url, "
        "pool_size=max(2, max_concurrency), max_overflow=4)`) that nothing disposes (`ApiHttpClient.close` closes only "
        "httpx): in a long-lived process each finished run leaves ~5 idle connections until a cyclic garbage collection "
        "(5 runs: 25). The fault suite itself hit `FATAL: sorry, too many clients already` until it collected garbage "
        "after each test. Fix: dispose the budget engine in `ApiHttpClient.close()` (or `EsiResource.close()`), or "
        "cache one engine per URL as `PostgresWarehouse.engine()` does."),
    "test_start_after_stop_in_the_same_process_starts_the_server": (
        "`start_embedded_postgres` after `stop_embedded_postgres` in the same process returns the URL without starting "
        "the server: pgserver caches its PostgresServer per data directory (`PostgresServer._instances`). Fix: in "
        "`start_embedded_postgres`, if the cached server's postmaster is not running "
        "(`PostmasterInfo.read_from_pgdata(dir)` is None or not running), drop the cached instance "
        "(`pgserver.PostgresServer._instances.pop(dir.resolve(), None)`) before `get_server`; and pop it in "
        "`stop_embedded_postgres`."),
}


def run_suite(results: Path, pytest_args: list[str]) -> tuple[int, float]:
    env = dict(os.environ, SYNC_ASSETS_FAULT_RESULTS=str(results))
    started = time.monotonic()
    basetemp = tempfile.mkdtemp(prefix="sync-assets-faults.")  # private: other pytest sessions cannot prune it
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}", "sync_assets_tests/faults", *pytest_args]
    code = subprocess.call(argv, cwd=ROOT, env=env)
    return code, time.monotonic() - started


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _own_tests(fault: dict[str, Any], tests: dict[str, Any]) -> dict[str, Any]:
    """The tests of a fault: every test of the files its tests are in (one fault per file)."""
    files = {x.split("::")[0] for x in fault["tests"]}
    return {n: t for n, t in tests.items() if Path(n.split("::")[0]).name in files}


def render(data: dict[str, Any], wall_s: float | None) -> str:
    tests = data.get("tests", {})
    passed = sum(t["outcome"] == "passed" for t in tests.values())
    failed = [n for n, t in tests.items() if t["outcome"] != "passed"]
    lines = [
        "# Reliability: the invariants under real faults",
        "",
        f"Generated by `{COMMAND}` - do not edit by hand; run the command to refresh it.",
        "It runs the fault suite (`pytest sync_assets_tests/faults`, which `make test` also runs with everything else; "
        "`make faults` runs this command) with "
        "`SYNC_ASSETS_FAULT_RESULTS` set, then renders the figures the tests recorded. "
        "`SYNC_ASSETS_FAULT_SCALE=N` multiplies the counts (longer soaks); `SYNC_ASSETS_FAULT_SEED` varies the random choices.",
        "",
        f"Last run: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, scale {data.get('scale')}, seed {data.get('seed')}, "
        f"{os.cpu_count()} cores; {len(tests)} tests: **{passed} passed, {len(failed)} failed**"
        + (f"; fault suite wall time **{wall_s:.0f} s**." if wall_s is not None else f"; session {data.get('seconds')} s."),
        "",
        "Invariants are those of `../shared/design/ARCHITECTURE.md` (1 validators with rows, 2 mirror from one complete "
        "snapshot, 3 never delete on an error, 4 one materialization = one transaction, 5 shared budgets / error limit never "
        "exhausted, 6 no secret anywhere, 7 all-304 keeps the DataVersion, 8 bad configuration fails naming the setting).",
        "",
        "## Summary",
        "",
        "| # | fault | invariants | faults injected (runs / cases) | tests | result |",
        "|---|---|---|---|---|---|",
    ]
    # in the faults' numeric order (1, 2, ... 10, 11), not as strings sort (1, 11, 12, 2)
    faults = dict(sorted(data.get("faults", {}).items(), key=lambda kv: (not kv[0].isdigit(), int(kv[0]) if kv[0].isdigit() else 0, kv[0])))
    for key, fault in faults.items():
        own = _own_tests(fault, tests)
        ok = sum(t["outcome"] == "passed" for t in own.values())
        main = fault.get("main", "")
        tried = sum(t["tried"] for name, t in fault["tallies"].items() if name.startswith(main))
        result = "all pass" if ok == len(own) else f"**{len(own) - ok} failing (bugs below)**"
        lines.append(f"| {key} | {_cell(fault['title'])} | {fault['invariant']} | {tried} | {ok}/{len(own)} | {result} |")
    if failed:
        lines += ["", "## Open bugs (failing tests)", ""]
        for name in failed:
            short = name.split("::")[-1]
            base = short.split("[")[0]
            lines.append(f"- `{short}` - {tests[name]['outcome']}: `{_cell(tests[name]['error'])[:300]}`")
            case = short[len(base) + 1:-1] if "[" in short else ""
            if case and f"{base}[{case}]" in BUGS:
                lines.append(f"  - {BUGS[f'{base}[{case}]']}")
            elif base in BUGS:
                lines.append(f"  - {BUGS[base]}")
    for key, fault in faults.items():
        lines += ["", f"## {key}. {fault['title']}", "", f"Invariants: {fault['invariant']}.", "", f"**How it is injected:** {fault['injection']}", ""]
        for tally_name, tally in fault["tallies"].items():
            lines += [f"**{tally_name}** - tried {tally['tried']}:", "", "| outcome | count |", "|---|---|"]
            lines += [f"| {_cell(outcome)} | {count} |" for outcome, count in tally["outcomes"].items()]
            lines.append("")
        if fault["notes"]:
            lines += ["Notes:", ""] + [f"- {_cell(n)}" for n in fault["notes"]] + [""]
        lines.append("Tests:")
        lines.append("")
        for name, t in _own_tests(fault, tests).items():
            mark = "pass" if t["outcome"] == "passed" else f"**{t['outcome'].upper()}**"
            lines.append(f"- `{name.split('::', 1)[-1]}` - {mark} ({t['seconds']:.1f} s)")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-json", type=Path, help="render these saved figures instead of running the suite")
    parser.add_argument("--out", type=Path, default=DOC)
    parser.add_argument("--keep-json", type=Path, help="also save the figures here")
    args, pytest_args = parser.parse_known_args(argv)
    wall = None
    if args.from_json:
        data = json.loads(args.from_json.read_text())
        code = 0
    else:
        with tempfile.TemporaryDirectory() as tmp:
            results = Path(tmp) / "faults.json"
            code, wall = run_suite(results, pytest_args)
            if not results.exists():
                print("the fault suite wrote no figures (did it run?)", file=sys.stderr)
                return code or 1
            data = json.loads(results.read_text())
            if args.keep_json:
                args.keep_json.write_text(results.read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(data, wall))
    print(f"wrote {args.out} (pytest exit code {code})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
