"""Fixtures of the stack tests: the shared 4-broker cluster started by scripts/test.sh."""

from __future__ import annotations

import pytest

from flead_app.settings import load_settings
from flead_app.stack.kafka import KafkaCluster

HOW = "scripts/test.sh starts it with `flead stack up --brokers 4` (FLEAD_HOME={home})"


@pytest.fixture(scope="session")
def cluster4() -> KafkaCluster:
    """The running 4-broker cluster; fails (never skips) when it is not there."""
    home = load_settings().home_path
    cluster = KafkaCluster.from_home(home)
    if cluster is None or cluster.brokers != 4:
        found = "no cluster" if cluster is None else f"a {cluster.brokers}-broker cluster"
        pytest.fail(f"this test needs the 4-broker cluster, found {found} in {home}; " + HOW.format(home=home))
    st = cluster.status(topics=[], with_quorum=False)
    down = [b.node_id for b in st.brokers if not b.alive]
    if down:
        pytest.fail(f"brokers {down} of the 4-broker cluster in {home} are not running; " + HOW.format(home=home))
    return cluster
