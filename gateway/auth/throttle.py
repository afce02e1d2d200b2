"""Failed sign-ins are rate-limited per user and per source address: past the limit within
the window, password authentication answers 429 with Retry-After until the oldest failure
leaves the window, whether the next password is right or not (so guessing gains nothing).

Counted per gateway process, in memory: with several gateways behind a balancer the
limits apply to each one.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

_MAX_TRACKED = 100_000


class SignInThrottle:
    def __init__(
        self,
        per_user: int = 5,
        per_source: int = 20,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = {"user": per_user, "source": per_source}
        self._window_s = window_s
        self._clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def retry_after(self, user: str, source: str) -> int:
        """Seconds until a sign-in by `user` from `source` may be tried (0: now)."""
        now = self._clock()
        wait = 0.0
        for key in (("user", user), ("source", source)):
            failures = self._recent(key, now)
            if failures is not None and len(failures) >= self._limits[key[0]]:
                wait = max(wait, failures[0] + self._window_s - now)
        return int(wait) + 1 if wait > 0 else 0

    def failed(self, user: str, source: str) -> None:
        now = self._clock()
        if len(self._failures) > _MAX_TRACKED:
            # Bounded memory under a spray of names: forget the quietest first.
            self._failures = {
                k: v for k, v in self._failures.items() if v and v[-1] > now - self._window_s
            }
        for key in (("user", user), ("source", source)):
            self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, user: str) -> None:
        self._failures.pop(("user", user), None)

    def _recent(self, key: tuple[str, str], now: float) -> deque[float] | None:
        failures = self._failures.get(key)
        if failures is None:
            return None
        while failures and failures[0] <= now - self._window_s:
            failures.popleft()
        return failures
