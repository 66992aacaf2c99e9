"""Dagster wiring derived from dataset declarations."""
