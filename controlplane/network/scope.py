"""Who acts, and what each caller sees: the rules every network operation applies.

A non-admin caller sees its own project's resources and every shared or external network
(with its subnets); anything else answers NotFound, as if it did not exist. An admin sees all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import ColumnElement, Select, or_, select, true
from sqlalchemy.orm import InstrumentedAttribute

from controlplane.db.models import Network, Subnet
from controlplane.network.errors import Forbidden, Invalid

PROJECT_ID_MAX = 64
T = TypeVar("T")


@dataclass(frozen=True)
class Caller:
    project_id: str
    is_admin: bool

    def owns(self, project_id: str) -> bool:
        return self.is_admin or project_id == self.project_id

    def require_owner(self, project_id: str, action: str) -> None:
        """For what the caller sees but may not change (another project's shared network)."""
        if not self.owns(project_id):
            raise Forbidden(f"Policy doesn't allow {action} to be performed.")

    def target_project(self, asked: str) -> str:
        """The project a create is for: the caller's, or (admin only) the one asked for."""
        if not asked or asked == self.project_id:
            return self.project_id
        if not self.is_admin:
            raise Forbidden("Policy doesn't allow creating a resource for another project.")
        return check_project_id(asked)


def check_project_id(value: str) -> str:
    """A project id as the tables hold it (Keystone's are 32 hex digits)."""
    if not value or len(value) > PROJECT_ID_MAX:
        raise Invalid(f"'{value[:64]}' is not a valid project id")
    return value


@dataclass(frozen=True)
class Page:
    """One page of a list by id: at most `limit` rows (0: all) after `marker`."""

    limit: int = 0
    marker: str = ""

    def of(self, query: Select[T], id_column: InstrumentedAttribute[str]) -> Select[T]:
        query = query.order_by(id_column)
        if self.marker:
            query = query.where(id_column > self.marker)
        if self.limit > 0:
            query = query.limit(self.limit)
        return query


def owned(caller: Caller, column: InstrumentedAttribute[str]) -> ColumnElement[bool]:
    """WHERE clause: rows of the caller's project (all rows for an admin)."""
    if caller.is_admin:
        return true()
    return column == caller.project_id


def networks_visible(caller: Caller) -> ColumnElement[bool]:
    if caller.is_admin:
        return true()
    return or_(
        Network.project_id == caller.project_id,
        Network.shared.is_(True),
        Network.router_external.is_(True),
    )


def subnets_visible(caller: Caller) -> ColumnElement[bool]:
    """A subnet is seen with its network: its own project's, or on a shared or an external
    network."""
    if caller.is_admin:
        return true()
    shared_networks = select(Network.id).where(
        or_(Network.shared.is_(True), Network.router_external.is_(True))
    )
    return or_(Subnet.project_id == caller.project_id, Subnet.network_id.in_(shared_networks))
