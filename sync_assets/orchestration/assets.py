"""Assets derived from dataset declarations: one factory, no per-dataset code."""


import hashlib
import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import dagster as dg
from ..core.lazy import pandas as pd  # imported when a run first uses it
from pydantic import Field
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ..core.catalog import DATASETS_BY_KEY
from ..core.datasets import Column, Dataset
from ..core.heap import frozen_heap
from ..core.errors import (
    ApiError, AuthFailed, BudgetExhausted, CircuitOpen, FailureClass, Forbidden, RetryLater, Unauthorized,
)
from ..core.paging import NextToken, PageNumbers
from ..core.requests import SliceRequest, plan_requests
from ..core.snapshot import Outcome, SliceFailure, Snapshot, SnapshotSet, Validators
from ..fetch.frames import rows_to_frame
from ..fetch.auth import Credential
from ..fetch.resource import ApiResource
from ..fetch.spec import ApiSpec
from ..warehouse import PostgresWarehouse
from .automation import DEFERRED_TAG, slot
from .partitions import partitioned, partitions_def
from .settings import owners
from .failures import LAST_SYNC_CHECK, last_sync_result, run_created_at

IO_MANAGER_KEY = "warehouse_io_manager"
SOURCE_INPUT = "source"  # the input carrying a sliced dataset's source table


class SyncConfig(dg.Config):
    """Run config of every sync asset."""

    full_refresh: bool = Field(
        default=False,
        description="Ignore stored ETags and Expires and fetch every page unconditionally (repairs a stale cache).",
    )
    max_delete_share: float = Field(
        default_factory=lambda: float(os.environ.get(MAX_DELETE_SHARE_ENV) or 0.5),
        ge=0.0,
        le=1.0,
        description="Mirror datasets: refuse (and write nothing) when a snapshot would delete more than this share of "
        "the stored rows. 1.0 allows any change (env SYNC_ASSETS_MAX_DELETE_SHARE).",
    )


MAX_DELETE_SHARE_ENV = "SYNC_ASSETS_MAX_DELETE_SHARE"



def build_sync_asset(dataset: Dataset, spec: ApiSpec) -> dg.AssetsDefinition:
    """The asset of one dataset: the API's resource (key: the spec's name) fetches, the warehouse's
    IO manager writes; per-partition credentials come from the spec's credentials resource."""
    warn, fail = dataset.freshness_windows
    source = dataset.slices.source if dataset.slices else None
    credentials_key = spec.credentials_resource if dataset.auth else None
    if dataset.auth and credentials_key is None:
        raise ValueError(f"{dataset.key} declares auth, but the {spec.title} spec names no credentials resource")
    resource_keys = {spec.name, "warehouse"} | ({credentials_key} if credentials_key else set())

    @dg.asset(
        name=dataset.name,
        key_prefix=[dataset.api],
        group_name=dataset.asset_group,
        description=_description(dataset),
        partitions_def=partitions_def(dataset),
        io_manager_key=IO_MANAGER_KEY,
        kinds={"postgres", "python"},
        tags=asset_tags(dataset, spec),
        owners=owners(dataset.api),
        pool=spec.name,
        # the slices' source table arrives through the IO manager (load_input: the same partition's rows)
        ins={SOURCE_INPUT: dg.AssetIn(key=dg.AssetKey(source.split(".")))} if source else None,
        freshness_policy=dg.FreshnessPolicy.time_window(fail_window=fail, warn_window=warn),
        metadata={
            "dagster/column_schema": table_schema(dataset),
            "dagster/table_name": qualified_table_name(dataset),
            "dagster/storage_kind": "postgres",
            **code_references(dataset),
            "route": dataset.route,
            "write_mode": dataset.write_mode.value,
            "cache_seconds": dataset.cache_seconds,
            **({"sso_scope": dataset.auth.scope, "roles_any_of": ", ".join(dataset.auth.roles) or "member"} if dataset.auth else {}),
        },
        required_resource_keys=resource_keys,
        output_required=False,  # a walk the budget deferred records no materialization: it synced nothing
        check_specs=[
            dg.AssetCheckSpec(
                LAST_SYNC_CHECK,
                asset=dg.AssetKey([dataset.api, dataset.name]),
                description="Passes when a sync succeeds; the failure sensor fails it with the class and reason of a failed sync.",
            )
        ],
    )
    def sync(context: dg.AssetExecutionContext, config: SyncConfig, **inputs: Any):  # the source table's DataFrame  # yields MaterializeResult(Snapshot[Set])
        partition_key = context.partition_key if partitioned(dataset) else None
        warehouse: PostgresWarehouse = getattr(context.resources, "warehouse")
        api: ApiResource = getattr(context.resources, spec.name)
        # Credential first: a missing scope or role fails here, before any API call is spent.
        credentials = getattr(context.resources, credentials_key) if credentials_key else None
        # the credential is the partition key's (a seller's); a seller's month asks for the seller's
        key_part = dataset.split_partition(partition_key)[0] if partition_key else None
        credential = credentials.credential_for(dataset, key_part, context.log) if credentials else None
        requests = plan_requests(dataset, partition_key,
                                 _slice_values(dataset, partition_key, warehouse, inputs.get(SOURCE_INPUT), credential))
        if not config.full_refresh:
            requests = _changed(context, warehouse, dataset, requests)
        deferral: BudgetExhausted | None = None
        if dataset.slices is None and len(requests) == 1:
            # a paged walk loads its pages as they land (slices stay small: each is written after its fetch)
            try:
                with frozen_heap():  # the run's long-lived objects stay out of the walk's garbage collections
                    result: Snapshot | SnapshotSet = _fetch(
                        context, api, warehouse, dataset, requests[0], credentials, credential, config,
                        load_while_fetching=isinstance(dataset.paginator, (PageNumbers, NextToken)))
            except BudgetExhausted as exc:
                if exc.retry_at is None:
                    raise
                # nothing of a snapshot walk can be kept: no materialization, the sensor relaunches it
                yield _defer(context, warehouse, dataset, partition_key, exc, done=0, deferred=1)
                return
            metadata = fetch_metadata(result)
        else:
            with frozen_heap():
                result = _fetch_slices(context, api, warehouse, dataset, requests, credentials, credential, config, partition_key)
            metadata = batch_metadata(result)
            deferral = result.deferral
        for snapshot in result.snapshots if isinstance(result, SnapshotSet) else [result]:
            snapshot.max_delete_share = config.max_delete_share
        if isinstance(result, SnapshotSet) and result.failures:  # the write commits the others, then fails the run
            check = dg.AssetCheckResult(check_name=LAST_SYNC_CHECK, passed=False, description=(
                f"{len(result.failures)} of {len(result.failures) + len(result.snapshots)} requests failed: "
                f"{result.failures[0].message[:300]}"), metadata={"partition": partition_key or ""})
        elif deferral is not None and isinstance(result, SnapshotSet):
            check = _defer(context, warehouse, dataset, partition_key, deferral, len(result.snapshots), len(result.deferred))
        else:
            warehouse.clear_deferral(dataset.key, partition_key)
            check = _last_sync(context, warehouse, dataset, partition_key)
        yield dg.MaterializeResult(
            value=result, metadata=metadata, data_version=dg.DataVersion(result.data_version), check_results=[check]
        )

    return sync


def build_derived_asset(dataset: Dataset) -> dg.AssetsDefinition:
    """A dataset computed from other datasets' partitions (no API call): its inputs arrive through
    the IO manager (`load_input`: the upstream partition's rows), the result is written like a
    sync's (a mirror replaces the partition's scope). Re-derived when an input partition changes
    (Declarative Automation: `eager`)."""
    names = [key.split(".", 1)[1] for key in dataset.derived_from]
    ins = {name: dg.AssetIn(key=dg.AssetKey(key.split(".")), partition_mapping=_input_mapping(dataset, DATASETS_BY_KEY[key]))
           for name, key in zip(names, dataset.derived_from)}

    def derive(context: dg.AssetExecutionContext, **inputs: Any):  # the ins arrive as keywords
        partition_key = context.partition_key if partitioned(dataset) else None
        scope = partition_scope(dataset, partition_key)
        rows = dataset.compute(dict(zip(dataset.derived_from, (inputs[n] for n in names))), scope)  # type: ignore[misc]
        frame = rows_to_frame(rows, dataset.columns, f"{slot(dataset, partition_key)} (derived)")
        for position, column in enumerate(dataset.context_columns):
            frame.insert(position, column.name, pd.Series(scope[column.name], index=frame.index, dtype=column.pandas_dtype))
        version = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).values.tobytes()).hexdigest()[:20]
        snapshot = Snapshot(dataset.key, partition_key or "", Outcome.CHANGED, Validators(cursor=version), frame=frame,
                            context=scope)
        check = _last_sync(context, context.resources.warehouse, dataset, partition_key)
        yield dg.MaterializeResult(value=snapshot, metadata={"rows": len(frame), "inputs": ", ".join(dataset.derived_from)},
                                   data_version=dg.DataVersion(version), check_results=[check])

    return dg.asset(
        name=dataset.name, key_prefix=[dataset.api], group_name=dataset.asset_group, description=_derived_description(dataset),
        partitions_def=partitions_def(dataset), io_manager_key=IO_MANAGER_KEY, ins=ins, kinds={"postgres", "python"},
        tags={"api": dataset.api, "write_mode": dataset.write_mode.value, "auth": "none", "partitioned_by": "time_window"
              if dataset.windows else "key" if dataset.partitioning else "none", "derived": "true"},
        owners=owners(dataset.api), required_resource_keys={"warehouse"},
        automation_condition=_derive_when(dataset),
        metadata={"dagster/column_schema": table_schema(dataset), "dagster/table_name": qualified_table_name(dataset),
                  "dagster/storage_kind": "postgres", "write_mode": dataset.write_mode.value, **code_references(dataset)},
        check_specs=[dg.AssetCheckSpec(LAST_SYNC_CHECK, asset=dg.AssetKey([dataset.api, dataset.name]),
                                       description="Passes when the derivation succeeds; failed by the failure sensor otherwise.")],
    )(derive)


def _input_mapping(dataset: Dataset, upstream: Dataset) -> dg.PartitionMapping | None:
    """Same partitions by default; a dataset partitioned by key only (a seller) reads every window
    of its key from inputs partitioned by key and window (a seller's months)."""
    if dataset.partitioning and not dataset.windows and upstream.partitioning and upstream.windows:
        return dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name=upstream.partitioning.column.name)
    return None


def _derive_when(dataset: Dataset) -> dg.AutomationCondition:
    """Re-derived when an input partition is updated. Reading every window of a key, it must not
    wait for windows never synced (old history not backfilled): derived from what is there."""
    eager = dg.AutomationCondition.eager()
    inputs = [DATASETS_BY_KEY[key] for key in dataset.derived_from]
    if any(_input_mapping(dataset, upstream) for upstream in inputs):
        return eager.without(~dg.AutomationCondition.any_deps_missing())
    return eager


def _derived_description(dataset: Dataset) -> str:
    return dataset.description + "\n\n" + "\n".join([
        f"- Derived from: {', '.join(f'`{k}`' for k in dataset.derived_from)} (same partition, read through the IO manager)",
        f"- Table: `{dataset.api}.{dataset.name}` ({dataset.write_mode.value}, key {', '.join(dataset.primary_key)})",
        "- Re-derived when an input partition is materialized (Declarative Automation `eager`)",
    ])


def _fetch(context, api: ApiResource, warehouse, dataset: Dataset, request: SliceRequest, credentials,
           credential: Credential | None, config: SyncConfig, load_while_fetching: bool = False,
           cancel: threading.Event | None = None) -> Snapshot:
    previous = None if _stateless(dataset) else warehouse.read_validators(dataset, request.state_key)
    loader = warehouse.page_loader(dataset, request.state_key, request.context) if load_while_fetching else None
    try:
        snapshot = api.fetch_snapshot(dataset, request, previous, credential=credential, full_refresh=config.full_refresh,
                                      log=context.log, sink=loader, cancel=cancel)
    except Forbidden as exc:
        if loader is not None:
            loader.abort()
        if credential is not None and hasattr(credentials, "report_forbidden"):  # e.g. a lost role: say so, delete nothing
            credentials.report_forbidden(credential, dataset, exc.detail)
        raise
    except BaseException:
        if loader is not None:
            loader.abort()
        raise
    if loader is not None:
        # the pages are in the loader's transaction unless the resource had to fetch the snapshot
        # again whole (a row on two pages): then it carries the de-duplicated frame, and what the
        # loader holds (the first walk, the row twice) is rolled back
        if snapshot.changed and snapshot.frame is None and loader.finish():
            snapshot.staged = loader
            context.log.info(f"{request.label or dataset.key}: {loader.pages} pages loaded into the database while "
                             f"fetching" + (f" (emptied and reloaded {loader.restarts}x as the walk restarted)" if loader.restarts else ""))
        else:
            loader.abort()
            if snapshot.changed and snapshot.frame is None:  # its rows went to the failed load only
                context.log.warning(f"{request.label or dataset.key}: loading pages during the walk failed "
                                    f"({type(loader.error).__name__ if loader.error else 'not started'}); fetching the "
                                    "snapshot again and writing it after the walk instead")
                snapshot = api.refetch(dataset, request, previous, credential=credential, log=context.log,
                                       full_refresh=config.full_refresh)
    return snapshot


def _fetch_slices(context, api, warehouse, dataset, requests, credentials, credential, config,
                  partition_key: str | None) -> SnapshotSet:
    """Slices are fetched concurrently (bounded) and kept apart: one failure does not stop the others.
    A failed slice (a merchant) is recorded and retried on later runs with backoff; a success clears
    it. A spent budget defers the slices not fetched yet (the fetched ones are committed); refused
    credentials or an open circuit stop the run."""
    batch = SnapshotSet(dataset.key, [])
    held = {f.item: f for f in warehouse.failed_items(dataset.key, partition_key)
            if f.retry_at > datetime.now(timezone.utc)}
    context.log.info(f"{dataset.key}: {len(requests)} requests to make" + (f", {len(held)} backed off after failing" if held else ""))
    stop = threading.Event()  # no further slice starts (a spent budget, refused credentials)
    interrupted = threading.Event()  # the walks in flight stop too (the run is being stopped)

    def fetch(request: SliceRequest) -> Snapshot | None:
        if stop.is_set():
            return None
        if (item := held.get(request.state_key)) is not None:
            raise RetryLater(f"{request.label}: failed {item.attempts}x, not asked again before "
                             f"{item.retry_at:%Y-%m-%d %H:%M:%S} UTC; last error: {item.message[:300]}")
        try:
            return _fetch(context, api, warehouse, dataset, request, credentials, credential, config, cancel=interrupted)
        except BudgetExhausted as exc:
            if exc.retry_at is not None:
                stop.set()  # every later slice would be refused by the same budget
            raise
        except STOP_THE_RUN:
            stop.set()
            raise

    pool = ThreadPoolExecutor(max_workers=max(1, min(api.max_concurrency, len(requests))), thread_name_prefix="slice")
    try:
        futures = {pool.submit(fetch, r): r for r in requests}
        for future, request in futures.items():
            try:
                snapshot = future.result()
            except BudgetExhausted as exc:
                if exc.retry_at is None:
                    context.log.error(f"{request.label}: {exc}")
                    batch.failures.append(SliceFailure(request.state_key, exc))
                    continue
                batch.deferred.append(request.state_key)
                if batch.deferral is None or (exc.retry_at or 0) > (batch.deferral.retry_at or 0):
                    batch.deferral = exc
                continue
            except STOP_THE_RUN:
                raise
            except ApiError as exc:
                context.log.error(f"{request.label}: {exc}")
                batch.failures.append(SliceFailure(request.state_key, exc))
                continue
            if snapshot is None:
                batch.deferred.append(request.state_key)
            else:
                batch.snapshots.append(snapshot)
    except BaseException:
        # the run is being stopped (a cancel from the UI or the API interrupts this thread) or a
        # slice stopped it: queued slices are dropped and the walks in flight stop at their next
        # request or wait, instead of the run waiting for every slice to finish
        interrupted.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    _record_items(warehouse, dataset, partition_key, batch)
    return batch


STOP_THE_RUN = (Unauthorized, AuthFailed, CircuitOpen)  # every other slice would fail the same way


def _record_items(warehouse: PostgresWarehouse, dataset: Dataset, partition_key: str | None, batch: SnapshotSet) -> None:
    """Failed items are kept with their error (attempts, backoff); fetched ones are cleared."""
    failed = [(f.state_key, (type(f.error).failure_class or FailureClass.ERROR).value, f.message)
              for f in batch.failures if not isinstance(f.error, RetryLater)]
    if failed:
        warehouse.record_item_failures(dataset.key, partition_key, failed)
    if batch.snapshots:
        warehouse.clear_items(dataset.key, partition_key, [s.state_key for s in batch.snapshots])


def _last_sync(context, warehouse: PostgresWarehouse, dataset: Dataset, partition_key: str | None) -> dg.AssetCheckResult:
    """This partition synced; the check still fails while another partition's newest run failed."""
    warehouse.record_outcome(dataset.key, partition_key, run_created_at(context.instance, context.run.run_id), context.run.run_id)
    passed, description, metadata = last_sync_result(warehouse, dataset.key, partition_key)
    return dg.AssetCheckResult(check_name=LAST_SYNC_CHECK, passed=passed, description=description, metadata=metadata)


def _defer(context, warehouse: PostgresWarehouse, dataset: Dataset, partition_key: str | None, exc: BudgetExhausted,
           done: int, deferred: int) -> dg.AssetCheckResult:
    """Record work the API's budget cannot pay for now: the expiry sensor relaunches the partition at
    `retry_at`; the run ends instead of sleeping on the budget with its pool slot."""
    retry_at = datetime.fromtimestamp(exc.retry_at or time.time(), timezone.utc)
    label = slot(dataset, partition_key)
    warehouse.record_deferral(dataset.key, partition_key, retry_at, context.run.run_id, str(exc))
    context.instance.add_run_tags(context.run.run_id, {DEFERRED_TAG: retry_at.isoformat(timespec="seconds")})
    what = f"{deferred} of {done + deferred} requests" if done else "the sync"
    description = f"{what} deferred until {retry_at:%Y-%m-%d %H:%M:%S} UTC: {exc}"
    context.log.warning(f"{label}: {description}; the expiry sensor relaunches it then")
    return dg.AssetCheckResult(
        check_name=LAST_SYNC_CHECK, passed=False, severity=dg.AssetCheckSeverity.WARN, description=description,
        metadata={"partition": partition_key or "", "requests_done": done, "requests_deferred": deferred,
                  "retry_at": dg.MetadataValue.timestamp(retry_at)},
    )


def _stateless(dataset: Dataset) -> bool:
    """Immutable per-item payloads (killmail details) keep no validators: each is fetched once."""
    return bool(dataset.slices and dataset.slices.only_new)


def _slice_values(dataset: Dataset, partition_key: str | None, warehouse: PostgresWarehouse,
                  source: "pd.DataFrame | None", credential: Credential | None = None) -> list[dict] | None:
    """The slices of an upstream-sourced dataset: the source's rows in the same partition (as the IO
    manager loaded them) and, for time windows, only those active during the window; `only_new`
    drops those already stored."""
    slices = dataset.slices
    if slices is not None and slices.from_credential:
        if credential is None:
            raise ValueError(f"{dataset.key}: slices come from the partition's credential, and there is none")
        lists = [tuple(credential.scope.get(name, ())) for name in slices.names]
        if not all(lists):
            raise ValueError(f"{dataset.key}: the credential of {partition_key} gives no {', '.join(slices.names)}")
        return [dict(zip(slices.names, values)) for values in zip(*lists)]
    if slices is None or slices.source is None or source is None:
        return None
    active = slices.active_between if dataset.windows is not None else None
    version = [slices.version_column] if slices.version_column else []
    columns = list(dict.fromkeys([*slices.names, *(active or ()), *version]))
    picked = source[columns].drop_duplicates()
    rows = picked.astype(object).where(picked.notna(), None).to_dict("records")  # Python values: SQL parameters
    if active is not None:
        window = dataset.windows.window(dataset.split_partition(partition_key)[1] or "")  # type: ignore[union-attr]
        first, last = active
        rows = [r for r in rows if _meets(r[first], r[last], window.start.date(), window.end.date())]
    values = [{n: r[n] for n in [*slices.names, *version]} for r in rows]
    if slices.only_new:
        stored = {tuple(v[n] for n in slices.names)
                  for v in warehouse.distinct_values(dataset, slices.names, partition_scope(dataset, partition_key))}
        values = [v for v in values if tuple(v[n] for n in slices.names) not in stored]
    return sorted(values, key=lambda v: tuple(str(v[n]) for n in slices.names))


def _changed(context, warehouse: PostgresWarehouse, dataset: Dataset, requests: list[SliceRequest]) -> list[SliceRequest]:
    """Slices whose source version equals the one stored at their last sync are not asked again."""
    if not (dataset.slices and dataset.slices.version_column):
        return requests
    kept = [r for r in requests if r.version is None or (warehouse.read_validators(dataset, r.state_key) or Validators()).cursor != r.version]
    if len(kept) < len(requests):
        context.log.info(f"{dataset.key}: {len(requests) - len(kept)} of {len(requests)} slices unchanged since their "
                         f"last sync ({dataset.slices.version_column}); not asked again")
    return kept


def partition_scope(dataset: Dataset, partition_key: str | None) -> dict[str, Any]:
    """Column values that select a partition's rows (none for a window scoped by a time column)."""
    if partition_key is None:
        return {}
    key, window = dataset.split_partition(partition_key)
    scope: dict[str, Any] = {}
    if dataset.partitioning is not None and key is not None:
        scope[dataset.partitioning.column.name] = dataset.partitioning.value(key)
    if dataset.windows is not None and window is not None:
        scope.update(dataset.windows.path_values(window))
    return scope


def _meets(first: Any, last: Any, start: Any, end: Any) -> bool:
    """[first, last] (dates; no last: still active; no first: never active) meets [start, end)."""
    if first is None or first != first:  # None or NaT
        return False
    first = getattr(first, "date", lambda: first)()
    last = None if last is None or last != last else getattr(last, "date", lambda: last)()
    return first < end and (last is None or last >= start)


def batch_metadata(batch: SnapshotSet) -> dict[str, Any]:
    snapshots = batch.snapshots
    return {
        "requests_planned": len(snapshots) + len(batch.failures),
        "requests_failed": len(batch.failures),
        "requests_deferred": len(batch.deferred),
        "slices_changed": sum(s.changed for s in snapshots),
        "requests": sum(s.stats.requests for s in snapshots),
        "status_200": sum(s.stats.status_200 for s in snapshots),
        "status_304": sum(s.stats.status_304 for s in snapshots),
        "bytes_received": sum(s.stats.body_bytes for s in snapshots),
        "retries": sum(s.stats.retries for s in snapshots),
        "data_version": batch.data_version,
    }


def fetch_metadata(snapshot: Snapshot) -> dict[str, Any]:
    """Numeric metadata (so the UI plots it) describing what the fetch did."""
    stats, v = snapshot.stats, snapshot.validators
    metadata: dict[str, Any] = {
        "outcome": snapshot.outcome.value,
        "pages": stats.pages,
        "requests": stats.requests,
        "status_200": stats.status_200,
        "status_304": stats.status_304,
        "bytes_received": stats.body_bytes,
        "retries": stats.retries,
        "page_walks": stats.walks,
        "fetch_seconds": round(stats.duration_s, 3),
        "budget_wait_seconds": round(stats.budget_wait_s, 3),
        "data_version": snapshot.data_version,
    }
    if stats.budget_remaining is not None:
        metadata["budget_remaining"] = stats.budget_remaining
    if v.expires_at:
        metadata["expires_at"] = dg.MetadataValue.timestamp(v.expires_at)
    if v.last_modified:
        metadata["last_modified"] = dg.MetadataValue.timestamp(v.last_modified)
    return metadata


def asset_tags(dataset: Dataset, spec: ApiSpec) -> dict[str, str]:
    """Filterable in the UI's asset catalog (e.g. `write_mode=mirror`, `auth=token`)."""
    auth = "token" if dataset.auth else "api_key" if spec.api_key else "public"
    partitioned = "time_window" if dataset.windows else "key" if dataset.partitioning else "none"
    return {"api": dataset.api, "write_mode": dataset.write_mode.value, "auth": auth, "partitioned_by": partitioned}


def qualified_table_name(dataset: Dataset) -> str:
    """database.schema.table when the data database is configured at load, else schema.table (the
    IO manager reports the full name with every materialization)."""
    url = os.environ.get("SYNC_ASSETS_DATABASE_URL", "")
    try:
        database = make_url(url).database if url else None
    except (ArgumentError, ValueError):  # a bad URL fails the first run with a message naming the setting
        database = None
    return ".".join(filter(None, (database, dataset.api, dataset.name)))


def code_references(dataset: Dataset) -> dict[str, dg.CodeReferencesMetadataValue]:
    """The declaration's file and line, shown as the asset's source in the UI."""
    if dataset.declared_at is None:
        return {}
    path, line = dataset.declared_at
    with warnings.catch_warnings():  # beta in 1.13, and the UI's way to link an asset to its source
        warnings.simplefilter("ignore", dg.BetaWarning)
        return {"dagster/code_references": dg.CodeReferencesMetadataValue(
            code_references=[dg.LocalFileCodeReference(file_path=path, line_number=line, label="declaration")])}


def table_schema(dataset: Dataset) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=c.name,
                type=c.postgres_type,
                description=c.description or None,
                constraints=dg.TableColumnConstraints(nullable=_nullable(dataset, c), unique=dataset.primary_key == (c.name,)),
            )
            for c in dataset.table_columns
        ],
        constraints=dg.TableConstraints(other=[f"primary key ({', '.join(dataset.primary_key)})"]),
    )


def _nullable(dataset: Dataset, column: Column) -> bool:
    return not (column.required or column.name in dataset.primary_key)


def _description(dataset: Dataset) -> str:
    facts = [
        f"Source: `GET {dataset.route}`" + (f" with `{_query(dataset)}`" if dataset.query else ""),
        f"Table: `{dataset.api}.{dataset.name}` ({dataset.write_mode.value}, key {', '.join(dataset.primary_key)})",
        f"API cache: {dataset.cache_seconds} s; schedule `{dataset.schedule_cron}` (UTC)",
    ]
    if dataset.auth:
        facts.append(f"Token: scope `{dataset.auth.scope}`, roles: {', '.join(dataset.auth.roles) or 'membership'}")
    if dataset.partitioning and dataset.partitioning.labels:
        facts.append("Partitions: " + ", ".join(f"{k} {v}" for k, v in dataset.partitioning.labels.items()))
    return dataset.description + "\n\n" + "\n".join(f"- {fact}" for fact in facts)  # Markdown in the UI


def _query(dataset: Dataset) -> str:
    return "&".join(f"{k}={v}" for k, v in dataset.query.items())


__all__ = ["IO_MANAGER_KEY", "LAST_SYNC_CHECK", "SyncConfig", "build_sync_asset", "fetch_metadata", "table_schema"]
