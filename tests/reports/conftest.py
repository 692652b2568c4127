"""Fixtures for the report tests: synthetic rows (tests/reports/synthetic_rows.py) and a store of them."""

import importlib.util
from pathlib import Path

import pytest


def load_synthetic_rows():
    """The row factory as a module; tests import by path (pytest runs with --import-mode=importlib)."""
    spec = importlib.util.spec_from_file_location("synthetic_rows", Path(__file__).with_name("synthetic_rows.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ROWS = load_synthetic_rows()


@pytest.fixture
def row():
    return ROWS.make_row


@pytest.fixture
def store():
    return ROWS.write_store
