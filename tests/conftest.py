"""Suite-wide fixtures."""

from __future__ import annotations

import pytest
import structlog
from helpers_cluster import make_pki


@pytest.fixture(autouse=True)
def _fresh_structlog():
    """CLI entry points configure structlog for the whole process; give every test the defaults back."""
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A CA with a worker certificate for localhost/127.0.0.1 and a master client certificate."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def stranger(tmp_path_factory):
    """Another CA's certificates: what a worker or master must refuse."""
    return make_pki(tmp_path_factory.mktemp("stranger"), name="stranger")
