"""Which answers of the network service fail a build and which are retried: only an
unreachable or busy service is worth another try; an unexpected error would be met on
every retry, so the server goes to ERROR with it instead of staying in BUILD for good."""

from __future__ import annotations

import grpc
import pytest

from controlplane.conductor.nics import refusal_code


@pytest.mark.parametrize(
    "status",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    ],
)
def test_an_unreachable_or_busy_network_service_is_asked_again(status: grpc.StatusCode) -> None:
    assert refusal_code(status) is None


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.NOT_FOUND, 400),
        (grpc.StatusCode.FAILED_PRECONDITION, 409),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 403),
        (grpc.StatusCode.INTERNAL, 500),
        (grpc.StatusCode.UNKNOWN, 500),
        (grpc.StatusCode.UNIMPLEMENTED, 500),
    ],
)
def test_any_other_answer_fails_the_build_with_a_fault_code(
    status: grpc.StatusCode, code: int
) -> None:
    assert refusal_code(status) == code
