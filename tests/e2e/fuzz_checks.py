"""Schemathesis checks of Loom's own, loaded by tests/e2e/test_fuzz.py through
SCHEMATHESIS_HOOKS: what S1 asks of every answer beyond "not a 5xx"."""

from __future__ import annotations

import os
from typing import Any

import schemathesis

# No answer to a generated request is larger than this: lists are paged and long input is
# never echoed, so a bigger body means something leaked or went unbounded.
MAX_RESPONSE_BYTES = int(os.environ.get("LOOM_FUZZ_MAX_RESPONSE_BYTES", str(1024 * 1024)))


@schemathesis.check
def response_within_size_limit(ctx: Any, response: Any, case: Any) -> bool | None:
    size = len(response.content or b"")
    if size > MAX_RESPONSE_BYTES:
        raise AssertionError(
            f"{case.method} {case.path} answered {size} bytes (the limit is {MAX_RESPONSE_BYTES})"
        )
    return None
