"""Offline SP-API + LWA simulator over real HTTP: the sandbox for demos, tests and benchmarks."""
