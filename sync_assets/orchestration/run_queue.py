"""Dagster's run queue, with the slot tag on the sync runs that Dagster cannot tag by definition.

Runs of the sync jobs carry `sync_assets/slot` from the jobs themselves (automation.py), and the
queue's tag limit (dagster.yaml) holds a second run of the same slot. The asset page's Materialize
button and asset backfills launch the implicit `__ASSET_JOB` instead, whose runs only carry
`dagster/partition`: Dagster 1.13 derives their tags from the partitions definition alone. This
coordinator gives such a run the slot of the one asset it materializes before queuing it, so the
same limit applies to every launcher. Configured in dagster.yaml (`run_coordinator`).
"""

from __future__ import annotations

import dagster as dg

SLOT_TAG = "sync_assets/slot"  # defined here: every Dagster process loads this module with the instance, not the code location
PARTITION_TAG = "dagster/partition"
DATASET_TAG = "sync_assets/dataset"  # a sync job's own tag (orchestration/automation.py)


def slot_for_run(run: dg.DagsterRun) -> str | None:
    """The slot of a run that materializes exactly one asset and has no slot yet, else None (a run of
    several assets holds no single slot: its assets' own runs may overlap it). A sync job launched
    through the API without an asset selection (`submit_job_execution(job, tags={"dagster/partition":
    ...})`) names its dataset in the job's own tag."""
    if SLOT_TAG in run.tags:
        return None
    if run.asset_selection:
        if len(run.asset_selection) != 1:
            return None
        [key] = run.asset_selection
        dataset = ".".join(key.path)
    elif DATASET_TAG in run.tags:
        dataset = run.tags[DATASET_TAG]
    else:
        return None
    partition = run.tags.get(PARTITION_TAG)
    return f"{dataset}[{partition}]" if partition else dataset


class SyncRunCoordinator(dg.QueuedRunCoordinator):
    """`QueuedRunCoordinator` (same config, same daemon) that tags single-asset runs with their slot."""

    def submit_run(self, context: dg.SubmitRunContext) -> dg.DagsterRun:
        run = context.dagster_run
        slot = slot_for_run(run)
        if slot is not None:
            self._instance.add_run_tags(run.run_id, {SLOT_TAG: slot})  # stored before the run is queued
        return super().submit_run(context)
