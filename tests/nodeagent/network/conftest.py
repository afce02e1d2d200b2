from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.nodeagent.network.netlab import Lab, can_run_lab


@pytest.fixture
def lab() -> Iterator[Lab]:
    if not can_run_lab():
        pytest.skip("needs root and bridge netfilter (br_netfilter)")
    made = Lab()
    try:
        yield made
    finally:
        made.close()
