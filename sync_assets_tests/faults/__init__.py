"""Fault-injection tests: the architecture's invariants under real faults, with real processes.

Every test here injects one kind of fault (SIGKILL, a Postgres restart, HTTP storms, snapshots that
move mid-walk, error-limit storms, 404/403s, bad input, cancellation) and fails if an invariant of
../shared/design/ARCHITECTURE.md breaks. Counts scale with SYNC_ASSETS_FAULT_SCALE (default 1);
figures land in docs/RELIABILITY.md via `python -m sync_assets_tests.faults.report`.
"""
