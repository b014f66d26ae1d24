"""Shared fixtures: real servers started per test session (see tests/*_fixtures.py)."""

import sys
from pathlib import Path

pytest_plugins = ["store_fixtures", "sidecar_fixtures", "webhook_server"]

# Fixture modules live in tests/ (importable as plain modules by the tests).
sys.path.insert(0, str(Path(__file__).parent))
