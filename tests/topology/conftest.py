"""Fixtures shared by the topology tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.topologies import ClusterTopology, cluster_topology


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterTopology]:
    """One cluster per test module, for tests that leave every node running (a module whose
    tests kill nodes defines its own function-scoped ``cluster``)."""
    with cluster_topology() as topo:
        yield topo
