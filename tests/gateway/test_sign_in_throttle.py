"""Failed sign-ins are rate-limited per user and per source address."""

from __future__ import annotations

from controlplane.servicetoken import password_auth
from gateway.auth.throttle import SignInThrottle
from tests.gateway.conftest import Cloud


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_user_past_the_limit_waits_until_the_oldest_failure_leaves_the_window() -> None:
    clock = Clock()
    throttle = SignInThrottle(per_user=3, per_source=100, window_s=60, clock=clock)
    for _ in range(3):
        assert throttle.retry_after("alice", "10.0.0.1") == 0
        throttle.failed("alice", "10.0.0.1")
        clock.now += 1
    # From another address too: the limit is the user's.
    assert throttle.retry_after("alice", "10.0.0.2") == 58
    assert throttle.retry_after("bob", "10.0.0.2") == 0
    clock.now += 58
    assert throttle.retry_after("alice", "10.0.0.2") == 0


def test_one_address_failing_for_many_users_is_limited_and_a_success_clears_the_user() -> None:
    clock = Clock()
    throttle = SignInThrottle(per_user=3, per_source=5, window_s=60, clock=clock)
    for i in range(5):
        throttle.failed(f"user-{i}", "10.0.0.9")
    assert throttle.retry_after("someone-new", "10.0.0.9") > 0
    assert throttle.retry_after("someone-new", "10.0.0.8") == 0
    throttle.failed("carol", "10.0.0.1")
    throttle.failed("carol", "10.0.0.1")
    throttle.succeeded("carol")
    throttle.failed("carol", "10.0.0.1")
    assert throttle.retry_after("carol", "10.0.0.1") == 0


async def test_guessing_a_password_gets_429_even_for_the_right_one(cloud: Cloud) -> None:
    seeded = cloud.seed.user("demo")
    assert seeded is not None
    url = "/identity/v3/auth/tokens"
    for _ in range(5):
        wrong = await cloud.client.post(url, json=password_auth("demo", "wrong", "demo"))
        assert wrong.status_code == 401
    right = await cloud.client.post(url, json=password_auth("demo", seeded.password, "demo"))
    assert right.status_code == 429
    assert int(right.headers["retry-after"]) > 0
    assert "Too many failed sign-ins" in right.json()["error"]["message"]
