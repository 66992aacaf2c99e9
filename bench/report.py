"""bench/RESULTS.md and the chart from the runs of bench.run (medians, targets, profiles)."""

from __future__ import annotations

import platform
import re
import statistics
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent
COMMAND = ".venv/bin/python -m bench.run --write bench/RESULTS.md"  # what `make bench` runs
MB = 2**20

SPEEDUP = 3.0  # F full and M: sync_cli's whole process vs dlt's at its best, as a plain script and inside Dagster
API_SLACK = 1.1  # API: a walk's time vs the bound its declared limits allow
F100_SLACK = 1.3  # F-100: the in-process sync vs the concurrent fetch(+parse) floor at 100 ms per request
M_GROWTH = 1.25  # M: Δ peak RSS / Δ DataFrame of the data itself, 250,000 → 1,000,000 assets
# dlt systems: inside a Dagster asset / as a plain script (bench.run.DLT_SYSTEMS)
DLT_DAGSTER, DLT_SCRIPT = ("dlt_csv", "dlt_default"), ("dlt_script_csv", "dlt_script_default")
DLT_ALL = DLT_DAGSTER + DLT_SCRIPT
# API workload phases: the dataset each API's walk syncs
API_PHASES = {"amazon/inventory_summaries": "SP-API `amazon/inventory_summaries` (US + CA seller)",
              "iris/merchants": "IRIS `iris/merchants`"}

# F variants (bench.run.VARIANTS): the in-process full sync, phase label in the F table
VARIANT_LABELS = {"F-noheaders": "full, no X-Ratelimit-\\*", "F-5xx": "full, 30% 5xx"}

SYSTEM_NAMES = {
    "sync_cli": "sync_assets, `dagster asset materialize` (whole process)",
    "sync_inproc": "sync_assets, in-process `dagster.materialize`",
    "sync_inproc_quarter": "sync_assets, in-process, 1/4 of the rows",
    "dlt_csv": "dlt rest_api in a Dagster asset, `loader_file_format=\"csv\"` (COPY)",
    "dlt_default": "dlt rest_api in a Dagster asset, default (INSERT VALUES)",
    "dlt_script_csv": "dlt rest_api as a plain script (`python bench/dlt_pipeline.py`), `loader_file_format=\"csv\"` (COPY)",
    "dlt_script_default": "dlt rest_api as a plain script (`python bench/dlt_pipeline.py`), default (INSERT VALUES)",
    "floor": "floor: concurrent fetch+parse, COPY (no sync code)",
    "dagster": "Dagster fixed cost: trivial asset, CLI, Postgres storage, in_process",
    "dagster_frozen_exit": "the same, heap frozen at exit as sync_assets' code location does (the fixed cost sync_cli carries)",
    "dagster_multiprocess": "trivial asset, CLI, Postgres storage, multiprocess executor (Dagster's default)",
    "dagster_sqlite": "trivial asset, CLI, SQLite storage (no dagster.yaml), in_process",
}


@dataclass
class Cell:
    runs: list[Any]

    @property
    def ok(self) -> list[Any]:
        return [r for r in self.runs if r.ok]

    @property
    def n(self) -> int:
        return len(self.ok)

    def med(self, get: Callable[[Any], Any]) -> float | None:
        values = [v for v in (_safe(get, r) for r in self.ok) if isinstance(v, (int, float))]
        return statistics.median(values) if values else None

    def spread(self, get: Callable[[Any], Any]) -> tuple[float, float] | None:
        values = [v for v in (_safe(get, r) for r in self.ok) if isinstance(v, (int, float))]
        return (min(values), max(values)) if values else None

    def all(self, get: Callable[[Any], Any]) -> list[Any]:
        return [_safe(get, r) for r in self.ok]


def _safe(get: Callable[[Any], Any], run: Any) -> Any:
    try:
        return get(run)
    except (KeyError, TypeError, AttributeError, ZeroDivisionError):
        return None


def meta(run: Any, key: str) -> Any:
    return run.inner.get("metadata", {}).get(key)


class Results:
    def __init__(self, runs: list[Any]):
        self.runs = runs

    def cell(self, workload: str, phase: str, system: str) -> Cell:
        return Cell([r for r in self.runs if (r.workload, r.phase, r.system) == (workload, phase, system)])

    def failures(self) -> list[Any]:
        return [r for r in self.runs if not r.ok]


# =============================================================================== formatting


def f2(x: float | None, unit: str = "") -> str:
    return "n/a" if x is None else f"{x:,.2f}{unit}"


def fmb(x: float | None) -> str:
    return "n/a" if x is None else f"{x / MB:,.0f}"


def fint(x: float | None) -> str:
    return "n/a" if x is None else f"{int(x):,}"


def fspread(cell: Cell, get: Callable[[Any], Any]) -> str:
    s = cell.spread(get)
    return "" if s is None or cell.n < 2 else f" ({s[0]:.2f}–{s[1]:.2f})"


def ratio_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}×"


def verdict(ok: bool | None) -> str:
    return "n/a (not measured)" if ok is None else ("**met**" if ok else "**missed**")


# =============================================================================== report


def render(runs: list[Any], args: Any, elapsed: float, load_before: tuple, load_after: tuple, chart: Path | None = None,
           when: str | None = None) -> str:
    res = Results(runs)
    out: list[str] = []
    add = out.append
    stamp = when or f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}"
    versions = _versions()
    add("# Benchmark results\n")
    add(f"Produced by `make bench   # = {COMMAND}` on {stamp} UTC in {elapsed / 60:.1f} min: "
        f"{platform.machine()}, {_cores()} cores, {_mem_gib():.0f} GiB, CPython {platform.python_version()}, {versions}. "
        f"Median of {args.repeat} run(s) per cell (min–max in parentheses); systems interleaved, order rotated each repetition. "
        f"Load average before/after: {_load(load_before)} / {_load(load_after)} (the machine is shared: wall times are "
        "noisy, CPU seconds less so).\n")
    if args.quick:
        add("> **Smoke-test run (`--quick`): sizes and repetitions are reduced; these numbers are not the benchmark.**\n")
    failures = res.failures()
    if failures:
        add("> **Failed runs** (excluded from the medians):\n")
        for r in failures:
            add(f"> - `{r.label}`: {r.error[:900]}")
        add("")
    if chart is not None:
        try:
            import os

            here = Path(args.write).resolve().parent if getattr(args, "write", None) else chart.parent
            _chart(res, chart, args)
            add(f"![benchmark chart]({os.path.relpath(chart.resolve(), here)})\n")
            memory = chart.with_name(chart.stem.replace("results", "memory") + chart.suffix)
            if memory != chart and _memory_chart(res, memory, args):
                add(f"![memory over time, workload M]({os.path.relpath(memory.resolve(), here)})\n")
        except Exception as exc:  # the report matters more than the picture
            add(f"(chart not drawn: {type(exc).__name__}: {exc})\n")

    targets = _targets(res, args)
    add("## Targets\n")
    add("| target | measured | ratio | verdict |")
    add("|---|---|---|---|")
    for t in targets:
        add(f"| {t['target']} | {t['measured']} | {t['ratio']} | {verdict(t['ok'])} |")
    add("")
    add(_method(args))
    add(_f_tables(res, args))
    add(_f100_rl_tables(res, args))
    variants = _variant_tables(res, args)
    if variants:
        add(variants)
    add(_m_tables(res, args))
    api = _api_tables(res, args)
    if api:
        add(api)
    add(_fixed_cost_table(res))
    add(_profiles(targets, args))
    return "\n".join(out).rstrip() + "\n"


def _targets(res: Results, args: Any) -> list[dict]:
    t: list[dict] = []
    inner = lambda r: r.inner["seconds"]  # noqa: E731
    wall = lambda r: r.wall  # noqa: E731
    cli, inproc = res.cell("F", "full", "sync_cli"), res.cell("F", "full", "sync_inproc")
    floor = res.cell("F", "full", "floor")
    fetch_parse, copy = floor.med(lambda r: r.inner["fetch_parse_seconds"]), floor.med(lambda r: r.inner["copy_seconds"])

    # F full: whole process vs dlt at its best, as a plain script and inside Dagster
    t.append(_vs_dlt(res, "F", "F full", key="F_full_vs_dlt", profile=["F_full", "F_full_serial"]))
    # F full: in-process vs fetch+COPY floor
    s = inproc.med(inner)
    fl = fetch_parse + copy if fetch_parse is not None and copy is not None else None
    r = s / fl if s and fl else None
    t.append(dict(
        target="F full: in-process sync ≤ 1.25× the fetch+COPY floor", key="F_full_vs_floor", profile=["F_full", "F_full_serial"],
        measured=f"{f2(s, ' s')} vs floor {f2(fetch_parse)} + {f2(copy)} = {f2(fl, ' s')}", ratio=ratio_text(r),
        ok=None if r is None else r <= 1.25,
    ))
    # F unchanged
    unchanged = res.cell("F", "unchanged", "sync_inproc")
    cached = res.cell("F", "unchanged_cached", "sync_cli")
    u = unchanged.med(inner)
    r = u / s if u and s else None
    t.append(dict(
        target="F unchanged (after Expires, all 304): ≤ 5% of the full in-process sync time", key="F_unchanged_time",
        profile=["F_unchanged_serial"], measured=f"{f2(u, ' s')} vs full {f2(s, ' s')} (before Expires no request is made: the asset body takes "
        f"{f2(cached.med(lambda r: (meta(r, 'fetch_seconds') or 0) + (meta(r, 'write_seconds') or 0)), ' s')}, the whole process {f2(cached.med(wall), ' s')})",
        ratio=_pct(r), ok=None if r is None else r <= 0.05,
    ))
    written = [w for w in unchanged.all(lambda r: meta(r, "rows_written")) + res.cell("F", "unchanged", "sync_cli").all(lambda r: meta(r, "rows_written"))]
    t.append(dict(
        target="F unchanged: 0 rows written", key="F_unchanged_rows", profile=[],
        measured=f"rows written per run: {written}", ratio="—", ok=None if not written else all(w == 0 for w in written),
    ))
    body_full = inproc.med(lambda r: r.server["body_bytes"])
    body_unch = unchanged.med(lambda r: r.server["body_bytes"])
    dlt_unch = res.cell("F", "unchanged", "dlt_csv").med(lambda r: r.server["body_bytes"])
    saved = 1 - body_unch / body_full if body_full and body_unch is not None else None
    t.append(dict(
        target="F unchanged: ≥ 99% of body bytes saved", key="F_unchanged_bytes", profile=[],
        measured=f"{fint(body_unch)} B vs {fint(body_full)} B on the full sync (dlt re-sync: {fint(dlt_unch)} B)",
        ratio=_pct(saved) + " saved" if saved is not None else "n/a", ok=None if saved is None else saved >= 0.99,
    ))
    # F-100
    c100, f100 = res.cell("F-100", "full", "sync_inproc"), res.cell("F-100", "full", "floor")
    s100, fl100 = c100.med(inner), f100.med(lambda r: r.inner["fetch_parse_seconds"])
    walk100 = c100.med(lambda r: meta(r, "fetch_seconds"))
    r = s100 / fl100 if s100 and fl100 else None
    t.append(dict(
        target=f"F-100: ≤ {F100_SLACK:g}× the concurrent fetch floor", key="F100", profile=["F_full"],
        measured=f"in-process sync {f2(s100, ' s')} (its page walk alone {f2(walk100, ' s')}) vs floor {f2(fl100, ' s')} (8 connections)",
        ratio=f"{ratio_text(r)} (walk alone {ratio_text(walk100 / fl100 if walk100 and fl100 else None)})",
        ok=None if r is None else r <= F100_SLACK,
    ))
    # RL
    rl = res.cell("RL", "full", "sync_inproc")
    pages = rl.med(lambda r: meta(r, "pages")) or args.pages
    bound = pages / args.rate
    srl, walk = rl.med(inner), rl.med(lambda r: meta(r, "fetch_seconds"))
    r = srl / bound if srl else None
    t.append(dict(
        target=f"RL ({args.rate} requests/s): ≤ 1.1× pages/R", key="RL_time", profile=["F_full"],
        measured=f"in-process sync {f2(srl, ' s')} (page walk {f2(walk, ' s')}) vs {int(pages)}/{args.rate} = {bound:.2f} s",
        ratio=f"{ratio_text(r)} (walk alone {ratio_text(walk / bound if walk else None)})", ok=None if r is None else r <= 1.1,
    ))
    n429 = rl.all(lambda r: r.server["status_429"])
    t.append(dict(
        target="RL: zero 429", key="RL_429", profile=[], measured=f"429s per run: {n429}", ratio="—",
        ok=None if not n429 else all(n == 0 for n in n429) and rl.n == len(rl.runs),
    ))
    # F without rate-limit headers: the same walk, the same run, vs the with-headers in-process full sync
    noh = res.cell("F-noheaders", "full", "sync_inproc")
    if noh.runs:
        with_s, with_walk = inproc.med(inner), inproc.med(lambda r: meta(r, "fetch_seconds"))
        n_s, n_walk = noh.med(inner), noh.med(lambda r: meta(r, "fetch_seconds"))
        r = n_s / with_s if n_s and with_s else None
        killed = _killed(noh)
        if r is None and killed and with_s:  # killed before it finished: its time is at least the timeout
            bound = max(k.wall for k in killed)
            t.append(dict(
                target="F without rate-limit headers: in-process sync ≤ 1.2× the same walk with them", key="F_noheaders",
                profile=["F_noheaders_serial"],
                measured=f"killed after {bound:.0f} s ({_served(killed)}) vs {f2(with_s, ' s')} with headers",
                ratio=f"≥ {ratio_text(bound / with_s)}", ok=False,
            ))
        else:
            t.append(dict(
                target="F without rate-limit headers: in-process sync ≤ 1.2× the same walk with them", key="F_noheaders",
                profile=["F_noheaders_serial"],
                measured=f"{f2(n_s, ' s')} (page walk {f2(n_walk, ' s')}) vs {f2(with_s, ' s')} (page walk {f2(with_walk, ' s')}) with headers"
                         + (f"; {len(noh.runs) - noh.n} of {len(noh.runs)} runs failed" if noh.n < len(noh.runs) else ""),
                ratio=f"{ratio_text(r)} (walk alone {ratio_text(n_walk / with_walk if n_walk and with_walk else None)})",
                ok=None if r is None else r <= 1.2 and noh.n == len(noh.runs),
            ))
    # F under a 30% 5xx storm, ESI's error limit on: completes, exact data, no 420
    storm = res.cell("F-5xx", "full", "sync_inproc")
    if storm.runs:
        exact = [_exact(res, r) for r in storm.runs]
        t.append(dict(
            target="F 30% 5xx (ESI's error limit on): the walk completes with exact data", key="F_5xx", profile=[],
            measured=f"in-process sync {f2(storm.med(inner), ' s')} (page walk {f2(storm.med(lambda r: meta(r, 'fetch_seconds')), ' s')}), "
                     f"retries per run: {', '.join(str(meta(r, 'retries')) if r.ok else 'failed' for r in storm.runs)}",
            ratio=f"{sum(e is True for e in exact)}/{len(exact)} exact",
            ok=False if any(e is False for e in exact) else None if any(e is None for e in exact) else True,
        ))
        n420 = [r.server.get("status_420") for r in storm.runs]
        t.append(dict(
            target="F 30% 5xx: zero 420", key="F_5xx_420", profile=[], measured=f"420s per run: {n420}", ratio="—",
            ok=None if any(n is None for n in n420) else all(n == 0 for n in n420),
        ))
    # M
    mcli = res.cell("M", "full", "sync_cli")
    t.append(_vs_dlt(res, "M", "M", key="M_time", profile=["M_full"]))
    mcsv = res.cell("M", "full", "dlt_csv")
    rs, rd = mcli.med(lambda r: r.peak_rss), mcsv.med(lambda r: r.peak_rss)
    rscript = res.cell("M", "full", "dlt_script_csv").med(lambda r: r.peak_rss)
    r = rs / rd if rs and rd else None
    t.append(dict(
        target="M: peak RSS ≤ 2× dlt's best-config peak", key="M_rss", profile=["M_full"],
        measured=f"sync_cli {fmb(rs)} MB vs dlt_csv {fmb(rd)} MB" + (f" (as a plain script: {fmb(rscript)} MB)" if rscript else ""),
        ratio=ratio_text(r), ok=None if r is None else r <= 2,
    ))
    full_m, quarter = res.cell("M", "full", "sync_inproc"), res.cell("M", "full", "sync_inproc_quarter")
    g1, g4 = full_m.med(m_growth), quarter.med(m_growth)
    fr1, fr4 = full_m.med(lambda r: r.inner["frame_bytes"]), quarter.med(lambda r: r.inner["frame_bytes"])
    n1, n4 = full_m.med(m_rows), quarter.med(m_rows)
    r = (g1 - g4) / (fr1 - fr4) if None not in (g1, g4, fr1, fr4) and fr1 != fr4 else None
    missing = "" if None not in (fr1, fr4) else " (" + (_frame_errors(full_m, quarter) or "no read-back of the synced rows in these results") + ")"
    t.append(dict(
        target=f"M: memory grows with the pages only by the DataFrame itself (Δ peak RSS / Δ DataFrame ≤ {M_GROWTH:g})",
        key="M_growth", profile=["M_full"],
        measured=(f"{fint(n4)} → {fint(n1)} rows: in-process peak RSS growth {fmb(g4)} → {fmb(g1)} MB (Δ {fmb(g1 - g4 if None not in (g1, g4) else None)} MB), "
                  f"the data's own DataFrame (read back from the table) {fmb(fr4)} → {fmb(fr1)} MB "
                  f"(Δ {fmb(fr1 - fr4 if None not in (fr1, fr4) else None)} MB){missing}"),
        ratio=ratio_text(r), ok=None if r is None else r <= M_GROWTH,
    ))
    t += _api_targets(res)
    _explain(res, args, t)
    return t


def m_growth(run: Any) -> float:
    """Peak RSS of the in-process sync above its RSS before the materialization (imports excluded)."""
    return run.inner["peak_rss"] - run.inner["rss_before"]


def m_rows(run: Any) -> Any:
    """Rows of the synced partition: the read-back DataFrame's, else the asset's own count."""
    rows = run.inner.get("frame_rows")
    return rows if rows is not None else meta(run, "dagster/partition_row_count")


def _frame_errors(*cells: Cell) -> str:
    return "; ".join(dict.fromkeys(r.inner["frame_error"] for c in cells for r in c.ok if r.inner.get("frame_error")))


def _vs_dlt(res: Results, workload: str, label: str, key: str, profile: list[str]) -> dict:
    """sync_cli's whole process against dlt at its best as a plain script and inside Dagster: one
    target row, met when both speed-ups reach SPEEDUP."""
    wall = lambda r: r.wall  # noqa: E731
    cli = res.cell(workload, "full", "sync_cli")
    b = cli.med(wall)
    parts, ratios, oks = [], [], []
    for where, short, names in (("as a plain script", "plain script", DLT_SCRIPT), ("inside Dagster", "inside Dagster", DLT_DAGSTER)):
        name, cell = _best_dlt(res, workload, "full", names)
        a = cell.med(wall) if cell else None
        speedup = a / b if a and b else None
        parts.append(f"{name} {f2(a, ' s')} {where} (CPU seconds: {_cpu_ratio(cell, cli)} less)" if cell else f"no dlt run {where}")
        ratios.append(f"{ratio_text(speedup)} ({short})")
        oks.append(None if speedup is None else speedup >= SPEEDUP)
    n = f"{SPEEDUP:g}"
    return dict(
        target=f"{label}: whole process ≥ {n}× faster than dlt at its best as a plain script, and ≥ {n}× against dlt inside Dagster",
        key=key, profile=profile, measured=f"sync_cli {f2(b, ' s')} vs " + "; vs ".join(parts),
        ratio=" / ".join(ratios) + " faster", ok=False if False in oks else None if None in oks else True,
    )


def api_walk(run: Any) -> float | None:
    """The walk: from the first snapshot walk's start to the last one's end (the worker's timing of
    fetch_snapshot; slices walk concurrently), else the asset's own `fetch_seconds`."""
    span = run.inner.get("fetch_span_seconds")
    return span if isinstance(span, (int, float)) else meta(run, "fetch_seconds")


def api_bound(api: dict) -> float | None:
    """Seconds the declared limit allows a walk of `pages` requests at the least: the bucket's burst
    (or the window's capacity) at once, then the rest at the limit's rate."""
    pages = api.get("pages")
    if not pages:
        return None
    if api.get("kind") == "token_bucket":
        return max(0, pages - api["burst"]) / api["rate"]
    if api.get("kind") == "sliding_window":
        return max(0, pages - api["capacity"]) * api["window_s"] / api["capacity"]
    return None


#: The API a run's `api["api"]` names -> (module, ApiSpec): its cost model is part of the budget's policy.
_API_SPECS = {"IRIS": ("sync_assets.apis.iris.spec", "IRIS"), "SP-API": ("sync_assets.apis.amazon.spec", "AMAZON")}


def api_budget_policy(api: dict) -> Any | None:
    """The `BudgetPolicy` the product builds for the run's API (fetch/resource.py: the spec's cost
    model) with the margins the run recorded; None for a run that recorded none."""
    if api.get("safety_margin") is None:
        return None
    import importlib

    from sync_assets.fetch.budget import BudgetPolicy

    kw = {k: api[k] for k in ("safety_margin", "clock_slack_s", "clock_slack_share", "arrival_jitter_s") if k in api}
    if api.get("api") in _API_SPECS:
        module, name = _API_SPECS[api["api"]]
        kw["cost"] = getattr(importlib.import_module(module), name).costs
    return BudgetPolicy(**kw)


def api_window_plan(api: dict) -> tuple[int, bool, float] | None:
    """A sliding window's (requests the budget admits in one, whether it is spent whole, the
    seconds each of its tokens is held beyond the window), from `BudgetPolicy.window_tokens`."""
    policy = api_budget_policy(api)
    if policy is None or api.get("kind") != "sliding_window":
        return None
    capacity = int(api["capacity"])
    per_window = max(int(policy.window_tokens(capacity) + 1e-9) // policy.cost.ok, 1)
    return per_window, policy.exact_window(capacity), policy.slack(api["window_s"])


def window_spread_text(cell: Any) -> str:
    """What the sandbox saw of each limiter window (IRIS): how long its requests took to arrive.
    The bound has every window's requests arrive at once; a sliding-window budget admits a request
    only once the one a window earlier has left, so each window repeats the spread of the last."""
    spreads = [r.server.get("window_spreads") for r in cell.ok]
    spreads = [s for s in spreads if s and len(s) > 1]
    if not spreads:
        return ""
    first = statistics.median(s[0] for s in spreads)
    later = statistics.median(statistics.median(s[1:]) for s in spreads)
    last = statistics.median(s[-1] for s in spreads)
    return (f"; each limiter window's requests reached the sandbox over {f2(first)} s in the first window and {f2(later)} s "
            f"in the later ones (median; {f2(last)} s in the last), where the bound has them all at once: a sliding "
            "window admits a request only once the one a window earlier has left it, so a window's spread is carried "
            "into the next, and the requests of a spent window are admitted one charge (a transaction) at a time")


def api_own_schedule(api: dict) -> float | None:
    """The same bound under the product's own margins, what its budget allows itself: a token
    bucket's `usable_burst`; a sliding window's `window_tokens` requests (all of an
    exactly charged window, else less the margin) per window held `slack` longer."""
    pages, policy = api.get("pages"), api_budget_policy(api)
    if not pages or policy is None:
        return None
    if api.get("kind") == "token_bucket":
        from sync_assets.core.limits import TokenBucket

        return max(0.0, pages - policy.usable_burst(TokenBucket(api["rate"], api["burst"]))) / api["rate"]
    plan = api_window_plan(api)
    if plan is not None:
        per_window, _, slack = plan
        return ((pages - 1) // per_window) * (api["window_s"] + slack)
    return None


def api_limit_text(api: dict, sandbox: bool = False) -> str:
    p = "sandbox_" if sandbox else ""
    if api.get("kind") == "token_bucket":
        return f"token bucket {api.get(p + 'rate'):g}/s, burst {api.get(p + 'burst')}"
    if api.get("kind") == "sliding_window":
        return f"{api.get(p + 'capacity')} per {api.get(p + 'window_s'):g} s"
    return "n/a"


def _api_targets(res: Results) -> list[dict]:
    """API: each walk against the bound its declared limits allow, and no 429."""
    t: list[dict] = []
    counts: list[str] = []
    all_zero: bool | None = True
    walk = api_walk
    for phase, label in API_PHASES.items():
        cell = res.cell("API", phase, "sync_inproc")
        if not cell.runs:
            continue
        bound = cell.med(lambda r: api_bound(r.inner["api"]))
        w = cell.med(walk)
        r = w / bound if w and bound else None
        api = next((x.inner["api"] for x in cell.runs if x.inner.get("api")), {})
        pages = cell.med(lambda r: r.inner["api"]["pages"])
        failed = len(cell.runs) - cell.n
        t.append(dict(
            target=f"API walks ≤ {API_SLACK:g}× the bound their declared limits allow: {label}", key=f"API_{phase}", profile=[],
            measured=(f"page walk {f2(w, ' s')} (in-process materialization {f2(cell.med(lambda r: r.inner['seconds']), ' s')}) vs "
                      f"bound {f2(bound, ' s')} ({fint(pages)} pages at {api_limit_text(api)})"
                      + (f"; {failed} of {len(cell.runs)} runs failed" if failed else "")),
            ratio=ratio_text(r), ok=False if failed else None if r is None else r <= API_SLACK,
        ))
        n429 = [x.server.get("status_429") for x in cell.runs]
        counts.append(f"{label.split(' ')[0]} {n429}")
        if any(n is None for n in n429):
            all_zero = None
        elif any(n for n in n429) and all_zero is not None:
            all_zero = False
    if counts:
        t.append(dict(
            target="API walks: zero 429 (each sandbox's limit equals the declared one)", key="API_429", profile=[],
            measured="429s per run: " + "; ".join(counts), ratio="—", ok=all_zero,
        ))
    return t


def _explain(res: Results, args: Any, targets: list[dict]) -> None:
    """One line per target, from the numbers, saying where the time or memory goes."""
    inner = lambda r: r.inner["seconds"]  # noqa: E731
    walk = lambda r: meta(r, "fetch_seconds")  # noqa: E731
    write = lambda r: meta(r, "write_seconds")  # noqa: E731
    cli, inproc, floor = res.cell("F", "full", "sync_cli"), res.cell("F", "full", "sync_inproc"), res.cell("F", "full", "floor")
    fixed = _carried_fixed_cost(res)
    nob = res.cell("F", "full", "sync_inproc_nobudget")
    why: dict[str, str] = {}
    if cli.n:
        dlts = [(where, *_best_dlt(res, "F", "full", names)) for where, names in (("as a plain script", DLT_SCRIPT), ("inside Dagster", DLT_DAGSTER))]
        dlts = [(where, name, cell) for where, name, cell in dlts if cell]
        if dlts:
            d = min(cell.med(lambda r: r.wall) for _, _, cell in dlts)
            need = d / SPEEDUP if d else None
            room = need - fixed if need and fixed else None
            why["F_full_vs_dlt"] = (
                f"sync_cli {f2(cli.med(lambda r: r.wall))} s = Dagster's fixed cost {f2(fixed)} s (trivial asset) + imports, resources and "
                f"the sync itself (page walk {f2(cli.med(walk))} s, write {f2(cli.med(write))} s); dlt: "
                + ", ".join(f"{name} {where} {f2(cell.med(lambda r: r.wall))} s (pipeline.run {f2(cell.med(inner))} s)" for where, name, cell in dlts)
                + f". {SPEEDUP:g}× against the faster needs ≤ {f2(need)} s for the whole process, "
                + (f"i.e. ≤ {f2(room)} s above Dagster's fixed cost." if room is not None and room > 0 else "less than Dagster's fixed cost alone."))
    if inproc.n and floor.n:
        fp, cp = floor.med(lambda r: r.inner["fetch_parse_seconds"]), floor.med(lambda r: r.inner["copy_seconds"])
        w, x = inproc.med(walk), inproc.med(write)
        # CPU of the sync beyond what the same process spends when nothing changed (imports, set-up, Dagster)
        unch_cpu = res.cell("F", "unchanged", "sync_inproc").med(lambda r: r.cpu)
        sync_cpu = inproc.med(lambda r: r.cpu) - unch_cpu if unch_cpu is not None and inproc.med(lambda r: r.cpu) else None
        pages = inproc.med(lambda r: r.server.get("requests")) or 0
        why["F_full_vs_floor"] = (
            f"page walk {f2(w)} s vs fetch+parse floor {f2(fp)} s ({ratio_text(w / fp if w and fp else None)}); write {f2(x)} s vs "
            f"COPY floor {f2(cp)} s ({ratio_text(x / cp if x and cp else None)}: the pages are COPYed during the walk)"
            + (f"; without the shared Postgres budget the page walk takes {f2(nob.med(walk))} s" if nob.n else "")
            + (f". The sync costs its process {f2(sync_cpu)} CPU-s more than an unchanged re-sync "
               f"({1000 * sync_cpu / pages:.1f} ms a page: HTTP, Arrow's reading of each body, page digests, the loader's "
               f"encoding of COPY's input and its COPY calls, the shared budget's bookkeeping; both processes imported the "
               f"libraries in their warm-up) on 2 cores that at the same time run PostgreSQL's COPY of the pages and the "
               f"sandbox: the floor times fetch+parse and COPY apart, each with the machine to itself, and COPYs input "
               f"encoded beforehand (the faster of CSV and binary)"
               if sync_cpu and pages else "") + ".")
    unch = res.cell("F", "unchanged", "sync_inproc")
    if unch.n:
        total, dfl, w, x = unch.med(inner), unch.med(lambda r: r.inner["dagster_trivial_seconds"]), unch.med(walk), unch.med(write)
        rest = total - dfl - w - x if None not in (total, dfl, w, x) else None
        why["F_unchanged_time"] = (
            f"{f2(total)} s = Dagster in-process floor {f2(dfl)} s + "
            f"{int(unch.med(lambda r: r.server['requests']) or 0)} conditional requests in the page walk {f2(w)} s + "
            f"validators write {f2(x)} s + the rest {f2(rest)} s: Dagster's run and its two steps (the asset, and its checks "
            f"as one multi-asset check; each with its events), resource set-up, the DDL check, reading the validators, the stored row counts "
            f"read back for metadata (no table scan when nothing changed); 5% of the full sync is {f2((inproc.med(inner) or 0) * 0.05)} s.")
    c100 = res.cell("F-100", "full", "sync_inproc")
    if c100.n:
        fl100 = res.cell("F-100", "full", "floor").med(lambda r: r.inner["fetch_parse_seconds"])
        total, w, x = c100.med(inner), c100.med(walk), c100.med(write)
        rest = total - w - x if None not in (total, w, x) else None
        allowed = F100_SLACK * fl100 if fl100 else None
        why["F100"] = (
            f"in-process {f2(total)} s = page walk {f2(w)} s ({ratio_text(w / fl100 if w and fl100 else None)} the floor's "
            f"{f2(fl100)} s) + write {f2(x)} s + the rest of the materialization (resource setup, asset checks, Dagster's step) "
            f"{f2(rest)} s; {F100_SLACK:g}× the floor allows {f2(allowed)} s in all"
            + (f", so the walk alone leaves {f2(allowed - w)} s for everything else" if allowed and w and allowed > w else "")
            + ". No profile was taken at 100 ms: the F full profile shows the same code paths without the latency.")
    rl = res.cell("RL", "full", "sync_inproc")
    if rl.n:
        from sync_assets.fetch.budget import BudgetPolicy  # ESI's policy: what the budget plans of the RL window

        rl_tokens = BudgetPolicy().window_tokens(2 * args.rate)
        rl_plan = int(rl_tokens + 1e-9) // 2
        why["RL_time"] = (f"the page walk ({f2(rl.med(walk))} s; its threads waited {f2(rl.med(lambda r: meta(r, 'budget_wait_seconds')))} s in total for the budget) "
                          f"is paced by the rate, and the budget never plans the last 5% of a window whose charges are known only "
                          f"after the answer (on ESI a 4xx costs 5 tokens, a 200 2): {rl_plan} of {args.rate} requests a window "
                          f"({rl_tokens:g} of {2 * args.rate} tokens planned, 2 a request), so the walk alone takes at least "
                          f"{f2(pages_rl / rl_plan if (pages_rl := rl.med(lambda r: r.server.get('requests'))) else None)} s; "
                          f"the write ({f2(rl.med(write))} s) and the rest of the materialization "
                          f"({f2(rl.med(inner) - rl.med(walk) - rl.med(write)) if None not in (rl.med(inner), rl.med(walk), rl.med(write)) else 'n/a'} s) come on top.")
    noh = res.cell("F-noheaders", "full", "sync_inproc")
    if noh.runs:
        killed = _killed(noh)
        if noh.n:
            waited = noh.med(lambda r: meta(r, 'budget_wait_seconds'))
            why["F_noheaders"] = (
                f"without headers the page walk takes {f2(noh.med(walk))} s and its threads waited "
                f"{f2(waited)} s in total for the budget; with headers "
                f"{f2(inproc.med(walk))} s and {f2(inproc.med(lambda r: meta(r, 'budget_wait_seconds')))} s: "
                + ("the difference is the budget pacing a route whose bucket size the headers no longer tell (its declared "
                   "group: market-order, 12000 tokens / 15 min)." if waited and waited >= 0.1 else
                   "no walk waited for the budget, so the difference is not pacing: the two are separate runs of the same walk "
                   "(see each repetition's ratio in the table below)."))
        elif killed:
            k = killed[0]
            served = k.server.get("requests") or 0
            why["F_noheaders"] = (
                f"the walk was killed after {k.wall:.0f} s having made {served} requests "
                f"({_served(killed)}; one every {k.wall / served:.1f} s)" if served else
                f"the walk was killed after {k.wall:.0f} s without a request served") + (
                ": the budget paces a route without X-Ratelimit-* headers far below its declared rate (market-order, "
                "12000 tokens / 15 min); the profile shows where the walk waits.")
        else:
            why["F_noheaders"] = "every run failed: " + "; ".join(r.error[:200] for r in noh.runs)
    storm = res.cell("F-5xx", "full", "sync_inproc")
    if storm.runs:
        notes = []
        for r in storm.runs:
            if not r.ok:
                notes.append(f"rep {r.rep} failed: {r.error[:300]}")
            elif _exact(res, r) is not True:
                notes.append(f"rep {r.rep}: {r.inner.get('rows_in_table')} rows in the table vs {r.inner.get('snapshot_rows')} in the "
                             "sandbox's snapshot" + ("" if _same_rows(res, r) is not False else ", content differs from the clean walk"))
        why["F_5xx"] = "; ".join(notes) + "." if notes else ""
    mcli = res.cell("M", "full", "sync_cli")
    mdlts = [(where, *_best_dlt(res, "M", "full", names)) for where, names in (("as a plain script", DLT_SCRIPT), ("inside Dagster", DLT_DAGSTER))]
    mdlts = [(where, name, cell) for where, name, cell in mdlts if cell]
    if mcli.n and mdlts:
        why["M_time"] = (f"sync_cli: page walk {f2(mcli.med(walk))} s + write {f2(mcli.med(write))} s + fixed costs; "
                         + "; ".join(f"{name} ({where}): pipeline.run {f2(cell.med(inner))} s inside its {f2(cell.med(lambda r: r.wall))} s process"
                                     for where, name, cell in mdlts) + ".")
    for phase, label in API_PHASES.items():
        cell = res.cell("API", phase, "sync_inproc")
        if not cell.runs:
            continue
        if not cell.n:
            why[f"API_{phase}"] = "every run failed: " + "; ".join(" ".join(r.error.split())[:300] for r in cell.runs)
            continue
        own = cell.med(lambda r: api_own_schedule(r.inner["api"]))
        bound = cell.med(lambda r: api_bound(r.inner["api"]))
        w = cell.med(api_walk)
        api = next(x.inner["api"] for x in cell.ok if x.inner.get("api"))
        margin, plan = api.get("safety_margin"), api_window_plan(api)
        if plan is not None:
            per_window, exact, slack = plan
            margins = (f"it admits {per_window} of {api['capacity']} requests a window, "
                       + ("an exactly charged window being spent whole, each token held until its request was answered"
                          if exact else f"the last {100 * margin:g}% of an inexactly charged window kept back")
                       + f", and holds each token at least {f2(slack)} s beyond the window")
        else:
            jitter = api.get("arrival_jitter_s")
            margins = (f"it never plans the last {100 * margin:g}% of a bucket's burst"
                       + (f", nor the refill of {f2(jitter)} s kept for requests arriving out of step" if jitter else "")
                       if margin is not None else "")
        why[f"API_{phase}"] = (
            f"the walk's threads waited {f2(cell.med(lambda r: meta(r, 'budget_wait_seconds')))} s in total for the budget; "
            + (f"under the product's own margins ({margins}) the same walk takes at least {f2(own, ' s')} "
               f"({ratio_text(own / bound if own and bound else None)} the bound; the walk is {ratio_text(w / own if w and own else None)} that)"
               if own is not None and margin is not None else "") + window_spread_text(cell) + ".")
    m, mq = res.cell("M", "full", "sync_inproc"), res.cell("M", "full", "sync_inproc_quarter")
    if m.n:
        why["M_rss"] = (
            f"RSS {fmb(m.med(lambda r: r.inner['rss_before']))} MB before the materialization (imports), "
            f"{fmb(m.med(lambda r: r.inner['peak_rss_before_write']))} MB peak until the snapshot reaches the IO manager, "
            f"{fmb(m.med(lambda r: r.inner['peak_rss']))} MB peak overall (in-process), for data whose own DataFrame "
            f"(read back from the table) is {fmb(m.med(lambda r: r.inner['frame_bytes']))} MB.")
    if m.n and mq.n:
        parts = []
        for label, cell in (("quarter", mq), ("full", m)):
            parts.append(
                f"{label} ({fint(cell.med(m_rows))} rows): RSS {fmb(cell.med(lambda r: r.inner['rss_before']))} MB before → peak "
                f"{fmb(cell.med(lambda r: r.inner['peak_rss']))} MB (peak until the IO manager {fmb(cell.med(lambda r: r.inner['peak_rss_before_write']))} MB, "
                f"RSS when it starts {fmb(cell.med(lambda r: r.inner['rss_at_write']))} MB), own DataFrame {fmb(cell.med(lambda r: r.inner['frame_bytes']))} MB")
        during = m.med(lambda r: r.inner["peak_rss_before_write"] / r.inner["peak_rss"])
        where = ("" if during is None else " The full run's peak is reached during the page walk, before the IO manager is called."
                 if during >= 0.99 else " The full run's peak is reached in the IO manager's write, after the page walk.")
        why["M_growth"] = ("; ".join(parts) + "." + where + " The growth row compares the two peaks above their imports; the "
                           "M full profile shows where the full run's time and allocations go.")
    for t in targets:
        t["why"] = why.get(t["key"], "")


def _killed(cell: Cell) -> list[Any]:
    """Runs killed at their timeout (not the later repetitions skipped because of it)."""
    return [r for r in cell.runs if not r.ok and r.error.startswith("timeout")]


def _served(runs: list[Any]) -> str:
    return ", ".join(f"{r.server.get('status_200', 0)} pages served" for r in runs)


def _same_rows(res: Results, run: Any) -> bool | None:
    """Whether the run's table holds the very rows of the with-headers, error-free full sync of the
    same repetition (md5 over every row); None when either fingerprint is missing."""
    ref = next((r for r in res.cell("F", "full", "sync_inproc").ok if r.rep == run.rep), None)
    a, b = run.inner.get("fingerprint"), ref.inner.get("fingerprint") if ref else None
    return None if not a or not b else a == b


def _exact(res: Results, run: Any) -> bool | None:
    """Exact data: the run succeeded, its table has the sandbox snapshot's row count and (when the
    clean walk's fingerprint is there) the very same rows."""
    if not run.ok:
        return False
    rows, snapshot = run.inner.get("rows_in_table"), run.inner.get("snapshot_rows")
    if rows is None or snapshot is None:
        return None
    return rows == snapshot and _same_rows(res, run) is not False


def _cpu_ratio(slow: Cell | None, fast: Cell) -> str:
    """CPU seconds ratio: less sensitive than wall time to other work on a shared machine."""
    a, b = slow.med(lambda r: r.cpu) if slow else None, fast.med(lambda r: r.cpu)
    return ratio_text(a / b if a and b else None)


def _best_dlt(res: Results, workload: str, phase: str, names: Iterable[str] = DLT_DAGSTER) -> tuple[str, Cell | None]:
    best: tuple[str, Cell | None] = ("dlt", None)
    for name in names:
        cell = res.cell(workload, phase, name)
        if cell.n and (best[1] is None or cell.med(lambda r: r.wall) < best[1].med(lambda r: r.wall)):
            best = (name, cell)
    return best


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _method(args: Any) -> str:
    return f"""## How this was measured

- **One machine, one run.** `bench.run` starts one embedded PostgreSQL (pgserver, Unix socket) and the ESI sandbox in its
  own process (`sync_assets.apis.esi.sandbox.server.run`, uvicorn on 127.0.0.1); every system below is a separate process under
  `/usr/bin/time -v`: *wall* and *peak RSS* are the whole process (imports, Dagster, everything), *CPU* is user+system
  seconds. Every sync starts from an empty database; the sandbox is restarted for every repetition, so every system sees
  the same bytes (generation 0, then the same refreshed generation 1).
- **sync_cli**: `dagster asset materialize -m sync_assets.definitions --select <asset> --partition <key>` with
  `SYNC_ASSETS_ESI_URL`, `SYNC_ASSETS_DATABASE_URL` and a
  `DAGSTER_HOME` holding the project's own `dagster.yaml` (Postgres run/event storage in a separate `dagster` database via
  `DAGSTER_PG_URL`, pools on; its tables created once before anything is timed, as in a deployment). The code location's executor is the in_process one (`Definitions(executor=…)`); what
  Dagster's default multiprocess executor and SQLite storage would cost is in the Dagster fixed-cost table.
- **sync_inproc**: `python -m bench.workers sync`: the same code location (`sync_assets.definitions`: asset, its checks,
  resources from the same environment), `dagster.materialize` on an ephemeral instance, after one warm-up materialization
  of a trivial asset and the import of the libraries the code location defers to a run's first sync (pandas, numpy,
  pyarrow: `core.lazy.SYNC_LIBRARIES`, through its own prefetch). *in-process s* is the `dagster.materialize` call
  alone; the whole-process rows carry those first-call costs.
- **dlt_csv / dlt_default** (dlt inside Dagster): `bench/dlt_defs.py`: a Dagster asset running
  `dlt.pipeline(...).run(rest_api_source(...))` with a small X-Pages paginator class, `write_disposition="merge"` on the
  primary key (order_id / item_id; a per-region table, so no region column: a slight advantage to dlt), into the same
  Postgres, materialized exactly like sync_cli. dlt fetches pages one after the other and has no conditional requests.
  Its merge never deletes vanished rows (sync_assets' mirror mode does), so after the refresh its table keeps stale orders.
- **dlt_script_csv / dlt_script_default** (dlt as a plain script, how most dlt users run it): `python bench/dlt_pipeline.py`
  under the same `/usr/bin/time -v`, no Dagster imported; the very same source, paginator, merge and loader file format
  as the Dagster asset (both call `bench/dlt_source.py`, configured by the same `BENCH_DLT_*` variables). Timed in F full
  and M. *dlt at its best* is, for each of the two ways, the faster of its two configurations (`loader_file_format="csv"`
  loads with COPY; the default one, INSERT VALUES, runs once per workload); the F full and M targets compare sync_cli
  with both.
- **floor** (`python -m bench.workers floor`): page 1, then pages 2..N on 8 threads (sync_assets' `max_concurrency`)
  over keep-alive `http.client` connections, bytes only and with `orjson.loads`; then the same rows, encoded
  beforehand, `COPY`ed into an empty table with the dataset's DDL and committed, once as CSV and once in PostgreSQL's
  binary format (as sync_assets encodes it); the COPY floor is the faster of the two. *fetch+COPY floor* = fetch+parse + COPY.
- **Unchanged re-sync**: right after a full sync sync_assets does not ask ESI at all before the stored `Expires`
  (*unchanged_cached*); to measure the conditional path the harness moves the stored `expires_at` into the past
  (`UPDATE sync_assets.sync_state SET expires_at = now() - 1 s`, as the e2e tests do) and every page answers 304
  (*unchanged*). The sandbox caches orders 3600 s in this benchmark so that the expiry guard (wait when page 1 expires
  within 3 s) never fires by chance.
- **F-100**: sandbox knob `latency=0.1` (every request sleeps 100 ms server-side; concurrent requests overlap).
- **RL**: the sandbox's own limiter expresses "R requests/s": its sliding-window bucket with `rate_limit_window=1` and
  `rate_limit_tokens={{"market-order": 2R}}` (a 200 costs 2 tokens, a 304 1, a 429 nothing, like ESI); R = {args.rate}.
  The 429s are the sandbox's counters.
- **F without rate-limit headers** (*F-noheaders*): the in-process full sync once more per repetition, into a fresh database
  (so no bucket size learned by an earlier run), with the sandbox knob `rate_limit_enabled=False`: it sends no
  `X-Ratelimit-*` headers and limits nothing (the `X-ESI-Error-Limit-*` headers stay). The route keeps its declared
  group, market-order (12000 tokens / 15 min), which the product knows from the spec; {args.pages} pages cost
  {2 * args.pages} tokens. The target compares its median with the with-headers `sync_inproc` full median of the same run
  (with headers the sandbox announces market-order at 10⁹ tokens / 15 min). A run that exceeds its timeout is killed
  and reported as a lower bound.
- **F under a 30% 5xx storm** (*F-5xx*): the same, with `error_rate=0.3` on the route (502/503/504, 3 in 10 of them
  HTML pages; `error_seed` = repetition) and ESI's error limit on at the sandbox's default (100 errors per 60 s window,
  then 420 on every route), so the walk must pace itself on the error budget. *Exact data*: the table holds the
  sandbox snapshot's row count (`/_sandbox/state`) and the same rows (md5 over all rows) as the error-free walk.
- **M**: corporation `{98000001}` with {args.assets:,} assets (`{{"base": "small", "assets": N}}`), 1000 per page; a
  director's refresh token is stored (encrypted) in each sync database as `sync-assets esi login` would; dlt gets an
  access token. A second corporation with a quarter of the assets checks how memory grows with the pages.
- **API** (the SP-API and IRIS walks at their declared limits): each API's own sandbox in its own process, served over
  HTTP; one in-process materialization per repetition (`python -m bench.workers sync`: the code location
  `sync_assets.definitions` with `SYNC_ASSETS_APIS` naming that API, resources from the environment as a deployment sets
  them), into a fresh database (a fresh shared budget), right after the sandbox's limits were reset (full buckets, no
  open window). *page walk*: from the start of the first snapshot walk to the end of the last, timed by the worker around
  the resource's `fetch_snapshot` (a sliced dataset walks each slice concurrently and reports no walk time of its own);
  *pages* are the sandbox's 200s, the 429s its counters.
  SP-API: `AmazonSandbox(scale="{getattr(args, 'amazon_scale', 'full')}")` at Amazon's real rates (`rate_scale=1`), its
  US + CA seller stored as `sync-assets amazon add-seller` stores it (one LWA grant, before the timed run),
  `amazon/inventory_summaries` for that seller's partition: one walk per marketplace (next tokens, 50 SKUs a page), all
  on the seller's getInventorySummaries token bucket (declared 2/s, burst 2, the sandbox's too): bound =
  max(0, pages − burst) / rate over the seller's pages. IRIS: `IrisSandbox(merchants={getattr(args, 'iris_merchants', 0)})`
  with its limiter (one window per key, Laravel's fixed window opened by its first request: it admits whatever a sliding
  window of the same size does) at {getattr(args, 'iris_limit', '?').replace('/', ' requests per ')} s, and the resource's
  `rate_limit` set to the same plan (`SYNC_ASSETS_IRIS__RATE_LIMIT`); `iris/merchants` (1000 a page, first sync: every
  page): bound = max(0, pages − capacity) × window / capacity.
- Per-request counts and bytes are the sandbox's counters for the route during each run.
"""


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _f_tables(res: Results, args: Any) -> str:
    lines = [f"## F: The Forge market orders ({args.pages} pages × 1000 orders), 0 ms latency\n"]
    lines.append("| phase | system | wall s | in-process s | CPU s | peak RSS MB | rows in table | rows written | requests | 200 / 304 | body bytes |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for phase in ("full", "unchanged_cached", "unchanged", "refreshed"):
        for system in ("sync_cli", "sync_inproc", *DLT_ALL, "floor"):
            cell = res.cell("F", phase, system)
            if not cell.runs:
                continue
            lines.append(_row(_common(cell, phase, system)))
        if phase == "full":  # the same in-process full sync without rate-limit headers / under a 5xx storm
            for workload, label in VARIANT_LABELS.items():
                cell = res.cell(workload, "full", "sync_inproc")
                if cell.n:
                    lines.append(_row(_common(cell, label, "sync_inproc")))
                elif cell.runs:  # every run failed or was killed: say so instead of a row of n/a
                    killed = _killed(cell)
                    lines.append(_row([label, "sync_inproc", f"killed after {max(r.wall for r in killed):.0f} s" if killed else "failed",
                                       *["—"] * 8]))
    lines.append("")
    lines.append("*in-process s*: sync_inproc: the `dagster.materialize` call; sync_cli: the asset's fetch + write as "
                 "reported in its metadata (`fetch_seconds` + `write_seconds`); dlt: `pipeline.run` (inside the asset, or in "
                 "the plain script for dlt_script_*); "
                 "floor: fetch+parse + COPY. *rows written* for dlt: the rows of its last load package (every fetched row "
                 "is staged and merged).\n")
    if any(res.cell(w, "full", "sync_inproc").runs for w in VARIANT_LABELS):
        lines.append("*full, no X-Ratelimit-\\** and *full, 30% 5xx*: the in-process full sync again, in the same rotation, into "
                     "fresh databases, without rate-limit headers and under a 30% 5xx storm; see "
                     "[the section below](#f-without-rate-limit-headers-and-under-a-30-5xx-storm).\n")
    inproc = {p: res.cell("F", p, "sync_inproc") for p in ("full", "unchanged_cached", "unchanged", "refreshed")}
    lines.append("### sync_assets in-process, phase by phase (the former `bench/market_orders.py` table)\n")
    lines.append("| phase | in-process s | page walk s | write s | rows in table | rows written | rows/s | body bytes | 304 pages / pages |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for phase, cell in inproc.items():
        if not cell.n:
            continue
        s = cell.med(lambda r: r.inner["seconds"])
        rows = cell.med(lambda r: meta(r, "dagster/row_count"))
        lines.append(_row([
            phase, f2(s), f2(cell.med(lambda r: meta(r, "fetch_seconds"))), f2(cell.med(lambda r: meta(r, "write_seconds"))),
            fint(rows), fint(cell.med(lambda r: meta(r, "rows_written"))), fint(rows / s if rows and s else None),
            fint(cell.med(lambda r: r.server["body_bytes"])),
            f"{fint(cell.med(lambda r: r.server['status_304']))}/{fint(cell.med(lambda r: meta(r, 'pages')))}",
        ]))
    nob = res.cell("F", "full", "sync_inproc_nobudget")
    full = inproc["full"]
    if nob.n and full.n:
        lines.append("")
        lines.append("### Diagnostics: where the in-process time goes (F full and unchanged)\n")
        lines.append("| variant | in-process s | page walk s | write s | CPU s (process) |")
        lines.append("|---|---|---|---|---|")
        for name, cell in (("as configured (`sync_assets.definitions`, shared Postgres API budget on)", full),
                           ("the same with `budget_database_url=None` (per-process budget only)", nob),
                           ("unchanged / all 304, as configured", inproc["unchanged"]),
                           ("unchanged / all 304, `budget_database_url=None`", res.cell("F", "unchanged", "sync_inproc_nobudget"))):
            if cell.n:
                lines.append(_row([name, f2(cell.med(lambda r: r.inner["seconds"])), f2(cell.med(lambda r: meta(r, "fetch_seconds"))),
                                   f2(cell.med(lambda r: meta(r, "write_seconds"))), f2(cell.med(lambda r: r.cpu))]))
        dagster_floor = full.med(lambda r: r.inner["dagster_trivial_seconds"])
        lines.append("")
        lines.append(f"An in-process `dagster.materialize` of a trivial asset (warm, ephemeral instance) takes {f2(dagster_floor)} s on "
                     "this machine: the part of every in-process figure that is Dagster's.")
    floor = res.cell("F", "full", "floor")
    if floor.n:
        lines.append("")
        lines.append(f"Floor on this machine: fetch (bytes only) {f2(floor.med(lambda r: r.inner['fetch_seconds']))} s, "
                     f"fetch+orjson {f2(floor.med(lambda r: r.inner['fetch_parse_seconds']))} s, "
                     f"COPY of {fint(floor.med(lambda r: r.inner['copy_rows']))} rows "
                     f"({fint(floor.med(lambda r: r.inner['csv_bytes']))} CSV bytes) {f2(floor.med(lambda r: r.inner['copy_seconds']))} s"
                     f"{_copy_formats(floor)}.")
    return "\n".join(lines) + "\n"


def _copy_formats(floor: Cell) -> str:
    """Each format's COPY (medians), as " (the faster of CSV 0.66 s, binary 0.53 s)"; empty for older runs."""
    formats = sorted({fmt for r in floor.runs for fmt in r.inner.get("copy_seconds_by_format", {})})
    if not formats:
        return ""
    times = [f"{'CSV' if fmt == 'csv' else fmt} {f2(floor.med(lambda r, f=fmt: r.inner.get('copy_seconds_by_format', {}).get(f)))} s"
             for fmt in formats]
    return f" (the faster of {', '.join(times)})"


def _common(cell: Cell, phase: str, system: str) -> list[str]:
    def inner_seconds(r: Any) -> float | None:
        if system == "sync_cli":
            return (meta(r, "fetch_seconds") or 0) + (meta(r, "write_seconds") or 0)
        if system == "floor":
            return r.inner["fetch_parse_seconds"] + r.inner.get("copy_seconds", 0)
        return r.inner["seconds"]

    def rows_written(r: Any) -> Any:
        if system.startswith("dlt"):
            return r.inner.get("rows_loaded")
        if system == "floor":
            return r.inner.get("copy_rows")
        return meta(r, "rows_written")

    def rows_in_table(r: Any) -> Any:
        if system.startswith("dlt"):
            return r.inner.get("rows_in_table")
        if system == "floor":
            return r.inner.get("copy_rows")
        return meta(r, "dagster/row_count")

    return [
        phase, system, f2(cell.med(lambda r: r.wall)) + fspread(cell, lambda r: r.wall), f2(cell.med(inner_seconds)),
        f2(cell.med(lambda r: r.cpu)), fmb(cell.med(lambda r: r.peak_rss)), fint(cell.med(rows_in_table)),
        fint(cell.med(rows_written)), fint(cell.med(lambda r: r.server["requests"])),
        f"{fint(cell.med(lambda r: r.server['status_200']))} / {fint(cell.med(lambda r: r.server['status_304']))}",
        fint(cell.med(lambda r: r.server["body_bytes"])),
    ]


def _f100_rl_tables(res: Results, args: Any) -> str:
    lines = ["## F-100: the same behind 100 ms per request (generation 1 snapshot, empty tables)\n"]
    lines.append("| phase | system | wall s | in-process s | CPU s | peak RSS MB | rows in table | rows written | requests | 200 / 304 | body bytes |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for phase in ("full", "unchanged"):
        for system in ("sync_cli", "sync_inproc", "dlt_csv", "floor"):
            cell = res.cell("F-100", phase, system)
            if cell.runs:
                lines.append(_row(_common(cell, phase, system)))
    c = res.cell("F-100", "full", "sync_inproc")
    fl = res.cell("F-100", "full", "floor")
    lines.append("")
    lines.append(f"sync_inproc full: page walk {f2(c.med(lambda r: meta(r, 'fetch_seconds')))} s + write "
                 f"{f2(c.med(lambda r: meta(r, 'write_seconds')))} s; floor fetch (bytes only) "
                 f"{f2(fl.med(lambda r: r.inner['fetch_seconds']))} s, fetch+parse {f2(fl.med(lambda r: r.inner['fetch_parse_seconds']))} s "
                 f"(8 connections: ≥ ⌈{args.pages - 1}/8⌉ × 100 ms = {((args.pages - 1 + 7) // 8 + 1) * 0.1:.1f} s)."
                 + (" dlt_csv at 100 ms was run once (n=1): it fetches page after page." if res.cell("F-100", "full", "dlt_csv").runs
                    else " (dlt fetches one page after the other: ≥ pages × 100 ms = "
                         f"{args.pages * 0.1:.0f} s of waiting alone; run it with `--dlt-latency`.)") + "\n")
    lines.append(f"## RL: {args.rate} requests/s on the route (bound: pages/R)\n")
    lines.append("| system | in-process s | page walk s | bound pages/R s | requests | 200 / 304 / 429 | retries (metadata) | budget wait s (summed over the walk's threads) |")
    lines.append("|---|---|---|---|---|---|---|---|")
    rl = res.cell("RL", "full", "sync_inproc")
    for r in rl.runs:
        pages = meta(r, "pages") or args.pages
        lines.append(_row([
            f"sync_inproc #{r.rep}" + ("" if r.ok else " (FAILED)"), f2(r.inner.get("seconds")), f2(meta(r, "fetch_seconds")),
            f2(pages / args.rate), fint(r.server.get("requests")),
            f"{fint(r.server.get('status_200'))} / {fint(r.server.get('status_304'))} / {fint(r.server.get('status_429'))}",
            fint(meta(r, "retries")), f2(meta(r, "budget_wait_seconds")),
        ]))
    return "\n".join(lines) + "\n"


def _variant_tables(res: Results, args: Any) -> str:
    noh, storm = res.cell("F-noheaders", "full", "sync_inproc"), res.cell("F-5xx", "full", "sync_inproc")
    if not noh.runs and not storm.runs:
        return ""
    ref = {r.rep: r for r in res.cell("F", "full", "sync_inproc").runs}
    lines = ["## F without rate-limit headers, and under a 30% 5xx storm\n"]
    lines.append(f"The in-process full sync of The Forge ({args.pages} pages) again, each repetition into a fresh database, in the "
                 "F full rotation of the same run; *with headers* is that repetition's `sync_inproc` full run.\n")
    if noh.runs:
        lines.append("### No `X-Ratelimit-*` headers (sandbox `rate_limit_enabled=False`; declared group market-order, 12000 tokens / 15 min)\n")
        lines.append("| rep | in-process s | page walk s | with headers: in-process / walk s | ratio (walk alone) | requests | 200 / 429 "
                     "| budget wait s | X-Ratelimit-* on page 1 | rows in table / snapshot | result |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in noh.runs:
            w = ref.get(r.rep)
            s, walk = r.inner.get("seconds"), meta(r, "fetch_seconds")
            ws, wwalk = (w.inner.get("seconds"), meta(w, "fetch_seconds")) if w and w.ok else (None, None)
            if r.ok:
                ratio = f"{ratio_text(s / ws if s and ws else None)} ({ratio_text(walk / wwalk if walk and wwalk else None)})"
            elif r.error.startswith("timeout") and ws:
                ratio = f"≥ {ratio_text(r.wall / ws)}"
            else:
                ratio = "n/a"
            sent = r.inner.get("ratelimit_headers_sent")
            lines.append(_row([
                str(r.rep), f2(s) if r.ok else f"killed after {r.wall:.0f} s" if r.error.startswith("timeout") else "—", f2(walk),
                f"{f2(ws)} / {f2(wwalk)}", ratio, fint(r.server.get("requests")),
                f"{fint(r.server.get('status_200'))} / {fint(r.server.get('status_429'))}", f2(meta(r, "budget_wait_seconds")),
                "n/a" if sent is None else (", ".join(sent) or "none"),
                f"{fint(r.inner.get('rows_in_table'))} / {fint(r.inner.get('snapshot_rows'))}", _result(r),
            ]))
        lines.append("")
    if storm.runs:
        limit = next((r.inner.get("error_limit") for r in storm.runs if r.inner.get("error_limit") is not None), None)
        window = next((r.inner.get("error_limit_window") for r in storm.runs if r.inner.get("error_limit_window")), None)
        lines.append(f"### 30% 5xx (sandbox `error_rate=0.3`, `error_seed` = rep; ESI's error limit "
                     + (f"{limit} errors / {window} s" if limit is not None else "as configured") + ")\n")
        lines.append("| rep | in-process s | page walk s | with headers, no errors: in-process s | requests | 200 / 5xx / 420 / 429 "
                     "| retries (metadata) | page walks | budget wait s | rows in table / snapshot | same rows as the clean walk | exact | result |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in storm.runs:
            w = ref.get(r.rep)
            same = _same_rows(res, r)
            exact = _exact(res, r)
            lines.append(_row([
                str(r.rep), f2(r.inner.get("seconds")) if r.ok else (f"killed after {r.wall:.0f} s" if r.error.startswith("timeout") else "—"),
                f2(meta(r, "fetch_seconds")), f2(w.inner.get("seconds") if w and w.ok else None), fint(r.server.get("requests")),
                " / ".join(fint(r.server.get(k)) for k in ("status_200", "status_5xx", "status_420", "status_429")),
                fint(meta(r, "retries")), fint(meta(r, "page_walks")), f2(meta(r, "budget_wait_seconds")),
                f"{fint(r.inner.get('rows_in_table'))} / {fint(r.inner.get('snapshot_rows'))}",
                "n/a" if same is None else ("yes" if same else "**no**"), "n/a" if exact is None else ("yes" if exact else "**no**"),
                _result(r),
            ]))
        lines.append("")
        lines.append("*retries*: the materialization's `retries` metadata (requests retried, including pages retried after the rest of "
                     "the walk); *5xx* / *420* / *429*: the sandbox's counters for the route during the run; *same rows as the clean walk*: "
                     "md5 over every row of the table equals that of the with-headers, error-free full sync of the same repetition.")
    return "\n".join(lines) + "\n"


def _result(run: Any) -> str:
    if run.ok:
        return "ok"
    return "FAILED: " + " ".join(run.error.split())[:400].replace("|", "\\|")


def _m_tables(res: Results, args: Any) -> str:
    lines = [f"## M: {args.assets:,} corporation assets ({args.assets // 1000} pages, SSO token)\n"]
    lines.append("| system | wall s | in-process s | CPU s | peak RSS MB | rows in table | rows written | requests | body bytes | n |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for system in ("sync_cli", "sync_inproc", "sync_inproc_quarter", *DLT_ALL, "floor"):
        cell = res.cell("M", "full", system)
        if not cell.runs:
            continue
        c = _common(cell, "full", system)
        lines.append(_row([system, c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[10], str(cell.n)]))
    full_m, quarter = res.cell("M", "full", "sync_inproc"), res.cell("M", "full", "sync_inproc_quarter")
    lines.append("")
    lines.append("Memory of the in-process sync (RSS before the materialization → peak, read in the sync's own process; "
                 "DataFrame = the data itself: after the measured run, in a separate process, the partition's rows are read back "
                 "from the synced table into one pandas DataFrame with the dataset's column dtypes (sync_assets' own "
                 "`rows_to_frame`, every table column) and its `memory_usage(deep=True)` is taken; the sync itself need not "
                 "hold that frame):\n")
    lines.append("| rows | RSS before MB | peak RSS MB | growth MB | DataFrame MB | growth / DataFrame | peak before the write MB | RSS when the write starts MB |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for cell in (quarter, full_m):
        if not cell.n:
            continue
        before, peak = cell.med(lambda r: r.inner["rss_before"]), cell.med(lambda r: r.inner["peak_rss"])
        frame = cell.med(lambda r: r.inner["frame_bytes"])
        lines.append(_row([fint(cell.med(m_rows)), fmb(before), fmb(peak), fmb(peak - before if peak and before else None),
                           fmb(frame), ratio_text((peak - before) / frame if peak and before and frame else None),
                           fmb(cell.med(lambda r: r.inner["peak_rss_before_write"])), fmb(cell.med(lambda r: r.inner["rss_at_write"]))]))
    lines.append("")
    lines.append("*peak before the write*: the process peak when the IO manager receives the snapshot (the page walk, with "
                 "whatever it loads or keeps on the way); the rest of the peak comes from the IO manager's write.")
    errors = _frame_errors(full_m, quarter)
    if errors:
        lines.append(f"\nDataFrame not measured: {errors}.")
    fl = res.cell("M", "full", "floor")
    if fl.n:
        lines.append("")
        lines.append(f"Floor: fetch {f2(fl.med(lambda r: r.inner['fetch_seconds']))} s, fetch+orjson {f2(fl.med(lambda r: r.inner['fetch_parse_seconds']))} s, "
                     f"COPY {f2(fl.med(lambda r: r.inner['copy_seconds']))} s{_copy_formats(fl)}.")
    once = [name for name in ("dlt_default", "dlt_script_default") if res.cell("M", "full", name).n == 1 and args.repeat > 1]
    if once:
        lines.append(f"{' and '.join(once)} {'was' if len(once) == 1 else 'were'} run once (n=1) for M: only to show which dlt "
                     "configuration is faster.")
    return "\n".join(lines) + "\n"


def _api_tables(res: Results, args: Any) -> str:
    runs = [r for phase in API_PHASES for r in res.cell("API", phase, "sync_inproc").runs]
    if not runs:
        return ""
    lines = ["## API: the SP-API and IRIS walks against their declared limits\n"]
    lines.append("One in-process materialization per repetition (`bench.workers sync`, the code location with only that API), "
                 "into a fresh database, right after the sandbox's limits were reset. *bound*: what the declared limit allows "
                 "a walk of that many pages at the least (burst or window capacity at once, the rest at the limit's rate); "
                 "*own margins*: the same under what the product's budget allows itself (`BudgetPolicy`: a token bucket's `usable_burst`; a sliding window's `window_tokens` requests a window, each held at least `slack` beyond it); *page walk*: "
                 "from the start of the first snapshot walk to the end of the last (the worker times the resource's "
                 "`fetch_snapshot`, one per slice, run concurrently: here one per marketplace); *slices*: each walk's own "
                 "span in seconds since the materialization started.\n")
    lines.append("| dataset | rep | declared limit | sandbox limit | pages | bound s | own margins s | page walk s | walk / bound "
                 "| slices | in-process s | wall s | requests | 200 / 429 | budget wait s | result |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        api = r.inner.get("api", {})
        bound, own, w = api_bound(api), api_own_schedule(api), api_walk(r)
        lines.append(_row([
            f"`{r.phase}`", str(r.rep), api_limit_text(api), api_limit_text(api, sandbox=True), fint(api.get("pages")), f2(bound), f2(own),
            f2(w), ratio_text(w / bound if w and bound else None),
            ", ".join(f"{a:.2f}–{b:.2f}" for a, b in r.inner.get("fetch_spans") or []) or "n/a",
            f2(r.inner.get("seconds")), f2(r.wall), fint(r.server.get("requests")),
            f"{fint(r.server.get('status_200'))} / {fint(r.server.get('status_429'))}", f2(meta(r, "budget_wait_seconds")), _result(r),
        ]))
    lines.append("")
    amazon = next((r.inner["api"] for r in runs if r.inner.get("api", {}).get("api") == "SP-API"), None)
    if amazon:
        per = amazon.get("page_size") or 50
        walks = ", ".join(f"{mp} {n:,} SKUs = {-(-n // per)} pages" for mp, n in (amazon.get("inventory") or {}).items())
        lines.append(f"SP-API: seller `{amazon.get('seller_id')}`, one walk per marketplace ({walks}; {per} a page), all on the "
                     f"seller's {amazon.get('operation')} bucket: the burst is spent once, so the bound is max(0, pages − burst) / rate "
                     "over the seller's pages.")
    iris = next((r.inner["api"] for r in runs if r.inner.get("api", {}).get("api") == "IRIS"), None)
    if iris:
        lines.append(f"IRIS: {iris.get('merchants', 0):,} merchants, {iris.get('page_size')} a page; the resource's `rate_limit` "
                     f"(`SYNC_ASSETS_IRIS__RATE_LIMIT={iris.get('capacity')}/{iris.get('window_s'):g}`) equals the sandbox's limit; "
                     "bound = max(0, pages − capacity) × window / capacity.")
    pre = sorted({m for r in runs for m in r.inner.get("preimported", [])})
    if pre:
        lines.append(f"**The worker imported {', '.join(pre)} before the timed materialization (`--api-preimport`)**: a diagnostic run, "
                     "not the product as deployed.")
    return "\n".join(lines) + "\n"


def _carried_fixed_cost(res: Results) -> float | None:
    """Dagster's fixed cost as a sync_assets process carries it: the trivial asset with the heap
    frozen at exit (as the code location does), else the plain trivial asset."""
    frozen = res.cell("F", "full", "dagster_frozen_exit")
    return (frozen if frozen.n else res.cell("F", "full", "dagster")).med(lambda r: r.wall)


def _fixed_cost_table(res: Results) -> str:
    lines = ["## Dagster's own fixed cost (trivial asset, whole process)\n"]
    lines.append("| configuration | wall s | CPU s | peak RSS MB |")
    lines.append("|---|---|---|---|")
    for system in ("dagster", "dagster_frozen_exit", "dagster_multiprocess", "dagster_sqlite"):
        cell = res.cell("F", "full", system)
        if cell.n:
            lines.append(_row([SYSTEM_NAMES[system], f2(cell.med(lambda r: r.wall)) + fspread(cell, lambda r: r.wall),
                               f2(cell.med(lambda r: r.cpu)), fmb(cell.med(lambda r: r.peak_rss))]))
    cli, d = res.cell("F", "full", "sync_cli"), res.cell("F", "full", "dagster")
    a, b, c = cli.med(lambda r: r.wall), d.med(lambda r: r.wall), _carried_fixed_cost(res)
    if a and b and c:
        lines.append("")
        line = (f"Of sync_cli's {a:.2f} s for the full Forge sync, {c:.2f} s ({100 * c / a:.0f}%) is Dagster's fixed cost "
                "(Python start, `import dagster`, instance and run storage, run/step events)")
        if res.cell("F", "full", "dagster_frozen_exit").n:
            line += (f" as a sync_assets process carries it; a stock Dagster process pays {b:.2f} s, the difference being "
                     "CPython's final garbage collections over Dagster's heap at exit, which the code location skips "
                     "(`sync_assets/core/heap.py`)")
        lines.append(line + ".")
    return "\n".join(lines) + "\n"


def _profiles(targets: list[dict], args: Any) -> str:
    lines = ["## Profiles (pyinstrument, in-process sync; full trees in bench/profiles/*.txt; interactive HTML in the work directory with `--keep`)\n"]
    missed = [t for t in targets if t["ok"] is False]
    wanted: list[str] = []
    for t in missed:
        for p in t["profile"]:
            if p not in wanted:
                wanted.append(p)
    if not wanted:
        wanted = ["F_full", "M_full"]
    titles = {
        "F_full": "F full (as run: the page walk's threads are invisible to pyinstrument; the main thread waits in `_fetch_rest`)",
        "F_full_serial": "F full, page walk run inline (`--serial-fetch`): where the fetch CPU goes",
        "F_unchanged": "F unchanged (after Expires, all 304)",
        "F_unchanged_serial": "F unchanged (after Expires, all 304), page walk run inline (`--serial-fetch`)",
        "M_full": "M full (1,000,000 assets)",
        "F_noheaders_serial": "F full without `X-Ratelimit-*` headers, page walk run inline (`--serial-fetch`): where its time goes",
    }
    why = {t["key"]: [p for p in t["profile"]] for t in missed}
    if missed:
        lines.append("Missed targets and the profiles that explain them: " + "; ".join(f"{t['target']} → {', '.join(t['profile']) or 'see tables'}" for t in missed) + ".\n")
    notes = [f"- **{t['target']}** ({t['ratio']}): {t['why']}" for t in missed if t.get("why")]
    if notes:
        lines.append("What the measurements say about each miss:\n")
        lines.extend(notes)
        lines.append("")
    for name in wanted:
        path = Path(getattr(args, "profiles", ROOT / "bench" / "profiles")) / f"{name}.txt"
        if not path.exists():
            continue
        lines.append(f"### {titles.get(name, name)}\n")
        lines.append("```")
        lines.extend(_top(path.read_text()))
        lines.append("```\n")
    _ = why
    return "\n".join(lines)


_LINE = re.compile(r"^(?P<indent>[\s|`\-]*)(?P<t>\d+\.\d+)\s")


def _top(text: str, keep: float = 0.02, limit: int = 70) -> list[str]:
    """The profile tree cut to frames with ≥ `keep` of the total time."""
    lines = text.splitlines()
    total = None
    for line in lines:
        m = re.search(r"Duration:\s*([\d.]+)", line)
        if m:
            total = float(m.group(1))
            break
    out: list[str] = []
    for line in lines:
        m = _LINE.match(line)
        if m and total:
            if float(m.group("t")) < keep * total:
                continue
        elif not line.strip() or line.strip().startswith(("_", "To view", "pyinstrument")):
            continue
        out.append(line.rstrip())
        if len(out) >= limit:
            out.append("   ... (cut; full tree in the .txt/.html)")
            break
    return out


# =============================================================================== chart


def _chart(res: Results, path: Path, args: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [("sync_cli", "#1f77b4"), ("sync_inproc", "#6baed6"), ("dlt_csv", "#d62728"), ("dlt_default", "#ff9896"),
               ("dlt_script_csv", "#9467bd"), ("dlt_script_default", "#c5b0d5"), ("floor", "#2ca02c")]
    floor_time = lambda r: r.inner["fetch_parse_seconds"] + r.inner.get("copy_seconds", 0)  # noqa: E731
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.4), gridspec_kw={"width_ratios": [3, 1.3, 1.1]})
    panels = [("F", "full", "F full"), ("F", "unchanged", "F unchanged\n(after Expires)"), ("F", "refreshed", "F refreshed"),
              ("F-100", "full", "F-100 full")]
    ax = axes[0]
    width = 0.8 / len(systems)
    for i, (system, color) in enumerate(systems):
        values = []
        for workload, phase, _ in panels:
            cell = res.cell(workload, phase, system)
            values.append(cell.med(floor_time if system == "floor" else (lambda r: r.wall)) or 0)
        xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(panels))]
        n1 = res.cell("F", "full", system).n == 1 and args.repeat > 1
        ax.bar(xs, values, width, label=(system if system != "floor" else "floor (fetch+parse+COPY, in-process)") + (" (n=1)" if n1 else ""),
               color=color)
        for x, v, (workload, phase, _) in zip(xs, values, panels):
            if v:
                ax.text(x, v, f"{v:.1f}", ha="center", va="bottom", fontsize=6)
            elif res.cell(workload, phase, system).runs:
                ax.text(x, 0.1, "failed / timed out", ha="center", va="bottom", fontsize=7, rotation=90, color=color)
    fixed = _carried_fixed_cost(res)
    if fixed:
        ax.axhline(fixed, color="grey", linestyle="--", linewidth=1, label=f"Dagster fixed cost (trivial asset) {fixed:.1f} s")
    ax.set_xticks(range(len(panels)), [p[2] for p in panels])
    ax.set_ylabel("seconds, whole process (median)")
    ax.set_title(f"Market orders, The Forge ({args.pages} pages × 1000 orders)")
    ax.legend(fontsize=8)
    for k, metric in enumerate(("time", "rss")):
        ax = axes[k + 1]
        names, values, colors = [], [], []
        for system, color in systems:
            if metric == "rss" and system == "floor":
                continue
            cell = res.cell("M", "full", system)
            if not cell.n:
                continue
            get = (floor_time if system == "floor" else (lambda r: r.wall)) if metric == "time" else (lambda r: r.peak_rss / MB)
            names.append(system + (" (n=1)" if cell.n == 1 and args.repeat > 1 else ""))
            values.append(cell.med(get) or 0)
            colors.append(color)
        ax.bar(names, values, color=colors)
        for x, v in enumerate(values):
            ax.text(x, v, f"{v:.0f}" if v >= 10 else f"{v:.1f}", ha="center", va="bottom", fontsize=8)
        ax.set_title(f"M: {args.assets:,} corporation assets — {'time' if metric == 'time' else 'peak RSS'}", fontsize=10)
        ax.set_ylabel("seconds, whole process (floor: in-process)" if metric == "time" else "MB, whole process")
        ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _memory_chart(res: Results, path: Path, args: Any) -> bool:
    """RSS over time of the in-process M syncs (rep 0): where the peak happens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(name, next((r for r in res.cell("M", "full", name).ok if r.inner.get("rss_trace")), None))
            for name in ("sync_inproc_quarter", "sync_inproc")]
    runs = [(n, r) for n, r in runs if r is not None]
    if not runs:
        return False
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for (name, run), color in zip(runs, ("#9ecae1", "#1f77b4")):
        t = [p[0] for p in run.inner["rss_trace"]]
        mb = [p[1] / MB for p in run.inner["rss_trace"]]
        rows, frame = m_rows(run), run.inner.get("frame_bytes")
        ax.plot(t, mb, color=color, label=f"{fint(rows)} rows (the data's own DataFrame {fmb(frame)} MB)")
        if run.inner.get("write_started_at"):
            ax.axvline(run.inner["write_started_at"], color=color, linestyle=":", linewidth=1)
        ax.axhline(run.inner["rss_before"] / MB, color="grey", linestyle="--", linewidth=0.8)
    dlt = res.cell("M", "full", "dlt_csv").med(lambda r: r.peak_rss)
    if dlt:
        ax.axhline(2 * dlt / MB, color="#d62728", linestyle="--", linewidth=1, label=f"2 × dlt_csv peak RSS ({2 * dlt / MB:.0f} MB)")
    ax.set_xlabel("seconds since the materialization started (dotted: the IO manager receives the snapshot)")
    ax.set_ylabel("RSS, MB (dashed grey: before the materialization)")
    ax.set_title("sync_assets in-process, corporation assets: RSS over time")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# =============================================================================== environment


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("dagster", "dlt", "pandas", "pyarrow", "httpx"):
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    return ", ".join(out)


def _cores() -> int:
    import os

    return os.cpu_count() or 0


def _mem_gib() -> float:
    try:
        with open("/proc/meminfo") as fh:
            return int(fh.readline().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _load(load: tuple) -> str:
    return "/".join(f"{x:.1f}" for x in load)
