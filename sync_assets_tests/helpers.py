"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import dagster as dg


def failure_messages(result: dg.ExecuteInProcessResult) -> list[str]:
    """Every message of every failed step, causes included (the asset's own error is a cause)."""
    messages = []
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None:
            messages.append(error.message)
            error = error.cause
    return messages
