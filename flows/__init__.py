"""Prefect flows that orchestrate the DVC pipeline (see docs/prefect.md)."""
