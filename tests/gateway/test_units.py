"""Pure pieces of the gateway: roles and microversions (tokens: test_tokens.py; validation:
test_validation.py)."""

from __future__ import annotations

import pytest

from gateway.auth.context import expand_roles
from gateway.microversion import Microversion, VersionNotAcceptable, negotiate


def test_admin_implies_member_and_reader() -> None:
    roles = expand_roles([("a", "admin")], {"admin": "a", "member": "m", "reader": "r"})
    assert roles == (("a", "admin"), ("m", "member"), ("r", "reader"))


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({"openstack-api-version": "compute 2.101"}, VersionNotAcceptable),
        ({"x-openstack-nova-api-version": "2.x"}, ValueError),
        ({"openstack-api-version": "compute 02.1"}, ValueError),
    ],
)
def test_bad_microversions_raise(headers: dict[str, str], error: type[Exception]) -> None:
    with pytest.raises(error):
        negotiate(headers)


def test_microversions_compare_numerically_not_as_text() -> None:
    assert Microversion.parse("2.10") > Microversion.parse("2.9")
    assert negotiate({"openstack-api-version": "compute 2.9"}).at_least("2.9")
