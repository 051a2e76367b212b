"""Suite-wide fixtures."""

from __future__ import annotations

import pytest
import structlog


@pytest.fixture(autouse=True)
def _fresh_structlog():
    """CLI entry points configure structlog for the whole process; give every test the defaults back."""
    yield
    structlog.reset_defaults()
