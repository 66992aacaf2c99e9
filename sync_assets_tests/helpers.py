"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import dagster as dg
import httpx


def failure_messages(result: dg.ExecuteInProcessResult) -> list[str]:
    """Every message of every failed step, causes included (the asset's own error is a cause)."""
    messages = []
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None:
            messages.append(error.message)
            error = error.cause
    return messages


@contextmanager
def dagster_dev(env: Mapping[str, str], log: Path, timeout_s: float = 240) -> Iterator[str]:
    """A real `dagster dev` of the project's workspace on a free port, with exactly `env` and its
    output in `log`; yields the webserver's URL once `/server_info` answers. On exit its whole
    process group is stopped (SIGTERM, SIGKILL after 60 s)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster")), "dev", "-w", str(root / "workspace.yaml"), "-p", str(port)],
            cwd=root, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                assert process.poll() is None, log.read_text()[-4000:]
                try:
                    if httpx.get(f"{url}/server_info", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"dagster dev did not answer in {timeout_s:.0f} s:\n{log.read_text()[-4000:]}"
                time.sleep(1)
            yield url
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def resolve_ref(spec: dict, schema: dict) -> dict:
    """An OpenAPI/Swagger schema with its `$ref`s followed ("#/definitions/X", "#/components/schemas/X")."""
    while "$ref" in schema:
        node: Any = spec
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema
