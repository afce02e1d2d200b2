from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.nodeagent.network.netlab import Lab, require_lab


@pytest.fixture
def lab() -> Iterator[Lab]:
    require_lab()
    made = Lab()
    try:
        yield made
    finally:
        made.close()
