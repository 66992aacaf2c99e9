"""Ctrl-C stops `sync-assets demo` (what `make demo` runs) like it starts: a terminal's Ctrl-C sends
SIGINT to the whole foreground process group; every process of the demo (the CLI, the sandbox,
`dagster dev`, its webserver, daemon and code servers) must be gone soon after, and the embedded
PostgreSQL the demo started with it is stopped too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from sync_assets.db.embedded import stop_embedded_postgres

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, command line) of every live (not zombie) process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if stat[0] != "Z":
            found[int(entry.name)] = (int(stat[1]), int(stat[3]), cmdline)  # ppid, session
    return found


def _demo_processes(root: int, sessions: set[int]) -> dict[int, str]:
    """The CLI, its descendants, and every process in their sessions (dagster dev and the sandbox run
    in sessions of their own; a process whose parent died is still in its session)."""
    procs = _processes()
    tree, todo = {root}, [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, _, _) in procs.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                todo.append(pid)
    sessions |= {procs[pid][1] for pid in tree if pid in procs}
    return {pid: cmd for pid, (_, sid, cmd) in procs.items() if pid in tree or sid in sessions}


def _postmaster_alive(data_dir: Path) -> bool:
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return False
    return True


def test_ctrl_c_stops_every_process_of_the_demo(tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNC_ASSETS_", "DAGSTER_", "ESI_"))}
    env["DAGSTER_HOME"] = str(home)
    log = tmp_path / "demo.log"
    with open(log, "w") as out:
        process = subprocess.Popen([str(Path(sys.executable).with_name("sync-assets")), "demo", "--port", str(port)],
                                   cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    sessions: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        while True:  # up: the UI answers and the daemon has started its threads
            assert process.poll() is None, log.read_text()[-4000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2).status_code == 200 and "daemon" in log.read_text().lower():
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(1)
        assert _postmaster_alive(home / "pgdata")
        before = _demo_processes(process.pid, sessions)
        assert len(before) >= 5, before  # the CLI, the sandbox, dagster dev, its webserver, daemon, code server
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does (to the foreground group)
        deadline = time.monotonic() + 30  # generous: the issue asks for about 10 s on a busy 2-core machine
        while _demo_processes(process.pid, sessions) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _demo_processes(process.pid, sessions)
        assert not left, f"still running after SIGINT: {left}\n{log.read_text()[-3000:]}"
        assert process.wait(5) in (0, 130, -signal.SIGINT), log.read_text()[-2000:]
        assert not _postmaster_alive(home / "pgdata"), "the demo's embedded PostgreSQL outlived it"
    finally:  # whatever a failure left behind, in every session of the demo
        for pid in _demo_processes(process.pid, sessions):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        stop_embedded_postgres(home / "pgdata")


def test_dagster_dev_stops_on_sigterm_even_when_the_cli_was_started_with_sigint_ignored(tmp_path: Path) -> None:
    """A background job of a shell starts with SIGINT ignored, and its children inherit that unless
    the CLI's own handlers are in place first. `dagster dev` maps SIGTERM onto SIGINT's handler
    (Dagster's `setup_interrupt_handlers`, which the stand-in child below runs): inheriting SIGINT
    ignored, it would ignore the CLI's SIGTERM too and be killed without shutting its services down."""
    from sync_assets import cli

    ready, stopped = tmp_path / "ready", tmp_path / "stopped_cleanly"
    child = (f"import pathlib, time\nfrom dagster._utils.interrupts import setup_interrupt_handlers\n"
             f"setup_interrupt_handlers()\npathlib.Path({str(ready)!r}).touch()\n"
             f"try:\n    time.sleep(300)\nexcept KeyboardInterrupt:\n    pathlib.Path({str(stopped)!r}).touch()\n")

    def stop_once_ready() -> None:
        deadline = time.monotonic() + 120
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # `kill <the CLI>`: the CLI's handler stops its group

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # how a background job starts
    try:
        import threading

        threading.Thread(target=stop_once_ready, daemon=True).start()
        code = cli._supervise(lambda: subprocess.Popen([sys.executable, "-c", child], start_new_session=True))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130
    assert stopped.exists(), "the child ignored SIGTERM and was killed instead of stopping"
