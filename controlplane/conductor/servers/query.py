"""Reading servers: one by id with project scoping, and filtered, sorted, paginated lists.

Every filter that SQL can express runs in SQL; only the Python regular expressions (name
and ip) run here, over rows streamed in pages, so a page never costs a query per row.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loom.conductor.v1 import servers_pb2
from sqlalchemy import ColumnElement, Row, Select, and_, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.conductor.convert import STATUS_FROM_PB, VM_STATE_FROM_PB
from controlplane.conductor.states import status_filter
from controlplane.db.dialect import as_utc as aware
from controlplane.db.models import Instance
from controlplane.runtime.errors import InvalidArgument, NotFound


async def load_instance(
    session: AsyncSession,
    uuid: str,
    project_id: str = "",
    *,
    include_deleted: bool = False,
    for_update: bool = False,
) -> Instance:
    """The instance, or NotFound when absent, deleted (unless asked) or in another project."""
    stmt = select(Instance).where(Instance.uuid == uuid)
    if for_update:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).scalar_one_or_none()
    if (
        row is None
        or (project_id and row.project_id != project_id)
        or (row.deleted and not include_deleted)
    ):
        raise NotFound(f"Instance {uuid} could not be found.")
    return row


# Sort keys tenants may use, with a non-null expression so keyset pagination stays exact.
_SORT_KEYS: dict[str, Any] = {
    "created_at": Instance.created_at,
    "updated_at": func.coalesce(Instance.updated_at, Instance.created_at),
    "name": Instance.name,
    "display_name": Instance.name,
    "uuid": Instance.uuid,
    "id": Instance.id,
    "vm_state": Instance.vm_state,
    "task_state": func.coalesce(Instance.task_state, ""),
    "host": func.coalesce(Instance.host, ""),
    "availability_zone": func.coalesce(Instance.availability_zone, ""),
    "launch_index": Instance.launch_index,
}


# Lists read plain rows of these columns (keyed by attribute name, as the model has them):
# a page of up to max_limit servers skips the ORM's identity map and instance state.
SERVER_COLUMNS = [getattr(Instance, a.key) for a in Instance.__mapper__.column_attrs]

# A name filter made of literal characters only, optionally anchored at the start: SQL can
# apply it exactly (LIKE), instead of Python reading every row to test the expression.
_LITERAL_NAME = re.compile(r"(\^?)([A-Za-z0-9 _-]+)")


@dataclass(frozen=True)
class Page:
    servers: list[Row[Any]]
    next_marker: str


def _sql_name_filter(pattern: str, dialect: str) -> ColumnElement[bool] | None:
    """The SQL equivalent of `re.search(pattern, name)` when there is an exact one.

    Only on PostgreSQL, whose LIKE is case-sensitive as the regular expression is."""
    m = _LITERAL_NAME.fullmatch(pattern)
    if m is None or dialect != "postgresql":
        return None
    anchored, text = m.groups()
    if anchored:
        return Instance.name.startswith(text, autoescape=True)
    return Instance.name.contains(text, autoescape=True)


def _where(request: servers_pb2.ListServersRequest) -> list[ColumnElement[bool]]:
    cond: list[ColumnElement[bool]] = []
    if request.project_id:
        cond.append(Instance.project_id == request.project_id)
    changes = request.HasField("changes_since") or request.HasField("changes_before")
    # Nova: changes-since lists deleted servers too, so callers see what went away.
    if not request.include_deleted and not changes:
        cond.append(Instance.deleted.is_(False))
    if request.HasField("changes_since"):
        cond.append(Instance.updated_at >= aware(request.changes_since.ToDatetime()))
    if request.HasField("changes_before"):
        cond.append(Instance.updated_at <= aware(request.changes_before.ToDatetime()))
    if request.HasField("launched_before"):
        # A server that never launched has used nothing.
        cond.append(Instance.launched_at < aware(request.launched_before.ToDatetime()))
    if request.HasField("running_after"):
        after = aware(request.running_after.ToDatetime())
        cond.append(or_(Instance.terminated_at.is_(None), Instance.terminated_at > after))
    if request.host:
        cond.append(Instance.host == request.host)
    if request.image_id:
        cond.append(Instance.image_id == request.image_id)
    if request.flavor_id:
        cond.append(Instance.flavor_id == request.flavor_id)
    if request.ids:
        cond.append(Instance.uuid.in_(list(request.ids)))
    if request.reservation_id:
        cond.append(Instance.reservation_id == request.reservation_id)
    if request.user_id:
        cond.append(Instance.user_id == request.user_id)
    if request.HasField("locked"):
        cond.append(Instance.locked.is_(request.locked))
    if request.availability_zone:
        cond.append(Instance.availability_zone == request.availability_zone)
    if request.vm_states:
        cond.append(Instance.vm_state.in_([VM_STATE_FROM_PB[v].value for v in request.vm_states]))
    if request.statuses:
        alternatives: list[ColumnElement[bool]] = []
        for pb in request.statuses:
            f = status_filter(STATUS_FROM_PB[pb])
            clause: ColumnElement[bool] = Instance.vm_state.in_(f.vm_states)
            if f.only_tasks is not None:
                clause = and_(clause, Instance.task_state.in_(f.only_tasks))
            if f.except_tasks:
                clause = and_(
                    clause,
                    or_(Instance.task_state.is_(None), Instance.task_state.not_in(f.except_tasks)),
                )
            alternatives.append(clause)
        cond.append(or_(*alternatives))
    return cond


def _compile(pattern: str, what: str) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise InvalidArgument(f"Invalid regular expression for {what}: {exc}") from exc


def _python_match(row: Row[Any], name: re.Pattern[str] | None, ip: re.Pattern[str] | None) -> bool:
    if name is not None and not name.search(row.name):
        return False
    return ip is None or any(ip.search(str(a.get("address", ""))) for a in row.addresses or [])


async def list_servers(
    session: AsyncSession, request: servers_pb2.ListServersRequest, max_limit: int
) -> Page:
    """Postcondition: at most min(limit, max_limit) servers in the requested order, starting
    after the marker; next_marker is set exactly when more servers match."""
    limit = min(request.limit or max_limit, max_limit)
    if limit < 0:
        raise InvalidArgument("limit must be positive")
    key_name = request.sort_key or "created_at"
    if key_name not in _SORT_KEYS:
        raise InvalidArgument(f"Invalid sort key: {key_name}")
    direction = (request.sort_dir or "desc").lower()
    if direction not in ("asc", "desc"):
        raise InvalidArgument(f"Invalid sort direction: {request.sort_dir}")
    key = _SORT_KEYS[key_name]
    name_re = _compile(request.name, "name")
    ip_re = _compile(request.ip, "ip")

    cond = _where(request)
    if request.marker:
        scope = [Instance.project_id == request.project_id] if request.project_id else []
        marker = (
            await session.execute(
                select(key, Instance.id).where(Instance.uuid == request.marker, *scope)
            )
        ).one_or_none()
        if marker is None:
            raise InvalidArgument(f"marker [{request.marker}] not found")
        pair = tuple_(key, Instance.id)
        cond.append(pair < tuple(marker) if direction == "desc" else pair > tuple(marker))
    order = (
        (key.desc(), Instance.id.desc()) if direction == "desc" else (key.asc(), Instance.id.asc())
    )
    if name_re is not None:
        by_sql = _sql_name_filter(request.name, session.get_bind().dialect.name)
        if by_sql is not None:
            cond.append(by_sql)
            name_re = None
    stmt: Select[Any] = select(*SERVER_COLUMNS).where(*cond).order_by(*order)

    if name_re is None and ip_re is None:
        rows = list((await session.execute(stmt.limit(limit + 1))).all())
    else:
        rows = await _filtered(session, stmt, limit + 1, name_re, ip_re)
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, rows[-1].uuid if more and rows else "")


async def _filtered(
    session: AsyncSession,
    stmt: Select[Any],
    want: int,
    name_re: re.Pattern[str] | None,
    ip_re: re.Pattern[str] | None,
    chunk: int = 500,
) -> list[Row[Any]]:
    out: list[Row[Any]] = []
    offset = 0
    while len(out) < want:
        batch: Sequence[Row[Any]] = (await session.execute(stmt.offset(offset).limit(chunk))).all()
        out.extend(r for r in batch if _python_match(r, name_re, ip_re))
        if len(batch) < chunk:
            break
        offset += chunk
    return out[:want]
