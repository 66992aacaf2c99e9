"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

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


# Run a command with SIGINT at its default disposition. A process started with SIGINT ignored (any
# background job of a shell without job control, as CI runners and `cmd &` in scripts start them)
# passes that on to everything it starts, and `dagster dev` maps SIGTERM onto SIGINT's handler: it
# then ignores SIGTERM, never stops its webserver, daemon and code server, and each deployment's
# teardown waited out its whole SIGKILL grace period (60 s) for nothing.
DEFAULT_SIGINT = [sys.executable, "-c",
                  "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"]


def group_members(pgid: int) -> list[int]:
    """The live processes (not zombies) of process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def stop_group(process: subprocess.Popen, grace_s: float = 60) -> None:
    """Stop a command started in a session of its own and everything it started: SIGTERM to its
    process group, SIGKILL after `grace_s` if it has not exited; once it has, whatever of its group
    is left (a worker that outlived it) is killed, so that nothing of a test outlives it."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    # the group's id stays in use (cannot name another group) while any member lives
    if group_members(process.pid):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@contextmanager
def dagster_dev(env: Mapping[str, str], log: Path, timeout_s: float = 240) -> Iterator[str]:
    """A real `dagster dev` of the project's workspace on a free port, with exactly `env` and its
    output in `log`; yields the webserver's URL once `/server_info` answers. On exit its whole
    process group is stopped (`stop_group`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    with open(log, "w") as out:
        process = subprocess.Popen(
            [*DEFAULT_SIGINT, str(Path(sys.executable).with_name("dagster")), "dev", "-w", str(root / "workspace.yaml"),
             "-p", str(port)],
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
            stop_group(process)


# What `dagster sensor stop` and `dagster schedule stop` do, for every instigator but those named in
# argv[1] (JSON), with the code location loaded once: writes the names it stopped (JSON) to argv[2].
_STOP_AUTOMATION = """
import json, sys
from dagster._cli.utils import get_instance_for_cli
from dagster._cli.workspace.cli_target import get_repository_from_cli_opts
from dagster.version import __version__
from dagster_shared.cli import WorkspaceOpts

keep, stopped = set(json.loads(sys.argv[1])), []
with get_instance_for_cli() as instance, get_repository_from_cli_opts(
        instance, __version__, WorkspaceOpts(workspace=["workspace.yaml"]), None) as repo:
    for sensor in repo.get_sensors():
        if sensor.name not in keep:
            instance.stop_sensor(sensor.get_remote_origin_id(), sensor.selector_id, sensor)
            stopped.append(sensor.name)
    for schedule in repo.get_schedules():
        if schedule.name not in keep:
            instance.stop_schedule(schedule.get_remote_origin_id(), schedule.selector_id, schedule)
            stopped.append(schedule.name)
with open(sys.argv[2], "w") as out:
    json.dump(stopped, out)
"""


def stop_automation(env: Mapping[str, str], keep: Iterable[str] = ()) -> list[str]:
    """Before `dagster dev` starts: every sensor and schedule of the workspace but `keep` stored as
    stopped in the instance of `env` (DAGSTER_HOME, DAGSTER_PG_URL; `env` also decides which APIs
    the code location loads), as `dagster sensor stop` / `dagster schedule stop` store them. A
    stored state overrides the code's `default_status=RUNNING`, so the daemon's first tick already
    finds them stopped: a stop sent through GraphQL once the deployment is up lands after that
    tick, which has launched its runs by then. Returns the names stopped."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        names = Path(tmp) / "stopped.json"
        done = subprocess.run([sys.executable, "-c", _STOP_AUTOMATION, json.dumps(sorted(keep)), str(names)], cwd=root,
                              env=dict(env), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        return json.loads(names.read_text())


def resolve_ref(spec: dict, schema: dict) -> dict:
    """An OpenAPI/Swagger schema with its `$ref`s followed ("#/definitions/X", "#/components/schemas/X")."""
    while "$ref" in schema:
        node: Any = spec
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema
