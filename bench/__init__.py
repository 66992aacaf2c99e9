"""Benchmarks of sync_assets (not part of the test suite). Entry point: `python -m bench.run`."""
