"""The long-lived heap is frozen while a sync runs (core/heap.py) and thawed when the last one ends."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

from sync_assets.core.heap import frozen_heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_objects_alive_at_the_start_are_frozen_until_the_sync_ends() -> None:
    assert gc.get_freeze_count() == 0
    with frozen_heap():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


def test_the_syncs_own_cyclic_garbage_is_collected_while_frozen() -> None:
    with frozen_heap():
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: only the collector frees it
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None


def test_concurrent_syncs_thaw_only_when_the_last_one_ends_and_an_error_thaws_too() -> None:
    first_in, second_done = threading.Event(), threading.Event()

    def second() -> None:
        first_in.wait(5)
        with frozen_heap():
            assert gc.get_freeze_count() > 0  # joined the first sync's freeze
        second_done.set()

    worker = threading.Thread(target=second)
    worker.start()
    with pytest.raises(RuntimeError):
        with frozen_heap():
            first_in.set()
            assert second_done.wait(5)
            assert gc.get_freeze_count() > 0  # the second sync left; this one still holds the freeze
            raise RuntimeError("a failed sync")
    worker.join(5)
    assert gc.get_freeze_count() == 0


def test_a_host_that_froze_objects_itself_keeps_them_frozen() -> None:
    hosts = Node()
    gc.freeze()  # a pre-fork server's doing
    try:
        ours = Node()  # alive when the sync starts, after the host's freeze
        with frozen_heap():
            assert _tracked(ours)  # not frozen by us: the frozen generation is the host's
        assert not _tracked(hosts)  # and not thawed by us
    finally:
        gc.unfreeze()
    assert _tracked(hosts)


def _tracked(obj: object) -> bool:
    """In one of the collector's generations (the frozen one is not among them)."""
    return any(o is obj for o in gc.get_objects())


_EXITING = """
import atexit, gc, sys
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0, flush=True))  # runs after the hook
from sync_assets.core.heap import freeze_at_exit
before = atexit._ncallbacks()
freeze_at_exit(); freeze_at_exit()
print("hooks added:", atexit._ncallbacks() - before, flush=True)
out = open(sys.argv[1], "w")  # left open: still flushed and closed when the interpreter exits
out.write("written")
"""


def test_the_heap_is_frozen_when_the_interpreter_exits_and_nothing_is_lost(tmp_path) -> None:
    import subprocess
    import sys

    target = tmp_path / "left-open.txt"
    done = subprocess.run([sys.executable, "-c", _EXITING, str(target)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["hooks added: 1", "frozen at exit: True"]
    assert target.read_text() == "written"


def test_loading_the_code_location_installs_the_exit_freeze() -> None:
    import atexit

    import sync_assets.definitions  # noqa: F401  (every process that loads the code location)
    from sync_assets.core import heap

    assert heap._exit_hook
    before = atexit._ncallbacks()
    heap.freeze_at_exit()
    assert atexit._ncallbacks() == before
