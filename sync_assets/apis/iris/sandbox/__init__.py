"""Offline IRIS CRM simulator over real HTTP: the sandbox for demos, tests and benchmarks."""
