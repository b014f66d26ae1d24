"""Shared fixtures: real servers started per test session (see tests/*_fixtures.py)."""

pytest_plugins = ["store_fixtures"]
