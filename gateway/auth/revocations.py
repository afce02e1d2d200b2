"""The gateway's copy of the token revocations the identity service holds.

Tokens are checked here, without a call per request: the copy is brought up to date before
a request is handled whenever it is older than `interval_s` (one ListRevocations call,
for the revocations after the last one seen). A revocation made through this gateway counts
from its next request; one made elsewhere (another gateway, a password change) counts within
`interval_s`. While the identity service cannot be reached, the last copy stays in force
and the failure is logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from loom.identity.v1 import identity_pb2

from gateway.auth.tokens import TokenClaims

log = logging.getLogger("loom.gateway.revocations")

Fetch = Callable[[int], Awaitable[list[identity_pb2.Revocation]]]
DEFAULT_INTERVAL_S = 2.0


class Revocations:
    def __init__(self, fetch: Fetch, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self._fetch = fetch
        self._interval_s = interval_s
        self._by_audit: dict[str, datetime] = {}
        # (user id, project id) -> (issued_before, expires_at): the latest revocation of the
        # user's tokens scoped to that project, or of all of them for project id "".
        self._by_user: dict[tuple[str, str], tuple[datetime, datetime]] = {}
        self._last_id = 0
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    def revoked(self, claims: TokenClaims) -> bool:
        if claims.audit_id in self._by_audit:
            return True
        # Token times are whole seconds: a token issued in the very second of a revocation
        # counts as issued before it (sign in again a second later).
        for found in (
            self._by_user.get((claims.user_id, "")),
            self._by_user.get((claims.user_id, claims.project_id)),
        ):
            if found is not None and claims.issued <= found[0]:
                return True
        return False

    def add(self, revocation: identity_pb2.Revocation) -> None:
        expires = revocation.expires_at.ToDatetime(tzinfo=UTC)
        if revocation.audit_id:
            self._by_audit[revocation.audit_id] = expires
        if revocation.user_id:
            issued_before = revocation.issued_before.ToDatetime(tzinfo=UTC)
            key = (revocation.user_id, revocation.project_id)
            known = self._by_user.get(key)
            if known is None or known[0] < issued_before:
                self._by_user[key] = (issued_before, expires)

    def refresh_soon(self) -> None:
        """The next request refreshes the copy first (after a change made through this
        gateway that revoked tokens)."""
        self._fetched_at = float("-inf")

    async def refresh_if_due(self) -> None:
        if time.monotonic() - self._fetched_at < self._interval_s:
            return
        async with self._lock:
            if time.monotonic() - self._fetched_at < self._interval_s:
                return
            try:
                fresh = await self._fetch(self._last_id)
            except Exception as exc:
                log.warning("token revocations not refreshed: %s", exc)
                # Try again at the next interval, not on every request meanwhile.
                self._fetched_at = time.monotonic()
                return
            for revocation in fresh:
                self.add(revocation)
                self._last_id = max(self._last_id, revocation.id)
            self._drop_expired(datetime.now(UTC))
            self._fetched_at = time.monotonic()

    def _drop_expired(self, now: datetime) -> None:
        for audit_id in [a for a, expires in self._by_audit.items() if expires <= now]:
            del self._by_audit[audit_id]
        for key in [k for k, (_, expires) in self._by_user.items() if expires <= now]:
            del self._by_user[key]
