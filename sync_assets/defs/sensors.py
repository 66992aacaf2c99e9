"""Sensors: corporations appear as partitions when a token for them is stored."""

from __future__ import annotations

from collections import defaultdict

import dagster as dg

from ..auth import tokens
from .assets import AUTH_RESOURCE_KEY


def build_corporation_sensor(partitions_name: str) -> dg.SensorDefinition:
    @dg.sensor(
        name="esi_corporations_sensor",
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        required_resource_keys={AUTH_RESOURCE_KEY},
        description="Adds a corporation partition when a token of a new corporation is stored; reports (never deletes) "
        "corporations whose tokens all stopped working.",
    )
    def esi_corporations_sensor(context: dg.SensorEvaluationContext):
        stored = tokens.list_tokens(getattr(context.resources, AUTH_RESOURCE_KEY).engine())
        by_corporation: dict[int, list[tokens.TokenInfo]] = defaultdict(list)
        for token in stored:
            if token.corporation_id is not None:
                by_corporation[token.corporation_id].append(token)
        usable = {corp for corp, group in by_corporation.items() if any(t.status == "valid" for t in group)}
        known = set(context.instance.get_dynamic_partitions(partitions_name))
        new = sorted(str(corp) for corp in usable if str(corp) not in known)
        dead = sorted(key for key in known if int(key) not in usable)
        report = f"; no usable token (partition kept, data kept): {', '.join(dead)}" if dead else ""
        if dead:
            context.log.warning(f"corporations without a usable token: {', '.join(dead)}")
        if not new:
            return dg.SkipReason(f"no new corporation ({len(known)} known){report}")
        context.log.info(f"adding corporation partitions: {', '.join(new)}")
        return dg.SensorResult(
            dynamic_partitions_requests=[dg.DynamicPartitionsDefinition(name=partitions_name).build_add_request(new)]
        )

    return esi_corporations_sensor
