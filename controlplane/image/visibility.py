"""Which images a project sees: the one rule, as SQL, for the image service and for the
compute service (which boots only what the project may see).

A project sees an image that is public or community, one it owns, and a shared image it
is a member of, whatever its answer (pending, accepted or rejected), as Glance has it. A
member row of an image that is no longer shared grants nothing (the row is kept: sharing
the image again restores it). The image list is narrower: by default it shows the shared
images the project accepted (Glance's `member_status`, default accepted) and leaves out
other projects' community images, which are listed only when asked for by visibility.

An empty project id means the caller sees every image (an admin, or an internal caller).
Each function returns a boolean SQL expression over `Image`, correlated, to use in a WHERE
clause or as a column.
"""

from __future__ import annotations

from sqlalchemy import and_, exists, or_, true
from sqlalchemy.sql.elements import ColumnElement

from controlplane.db.models import Image, ImageMember

MEMBER_STATUSES = ("pending", "accepted", "rejected")
# The list's member_status filter also takes "all".
MEMBER_STATUS_FILTERS = (*MEMBER_STATUSES, "all")


def _membership(project_id: ColumnElement[str] | str, status: str = "all") -> ColumnElement[bool]:
    """The project is a member of this shared image (with this answer, unless "all")."""
    conditions = [ImageMember.image_id == Image.id, ImageMember.member_id == project_id]
    if status != "all":
        conditions.append(ImageMember.status == status)
    return and_(Image.visibility == "shared", exists().where(*conditions).correlate(Image))


def _open_to_all() -> ColumnElement[bool]:
    # Two comparisons, not IN: an IN list compiles to an expanding parameter, which the
    # boot's statement, sent straight to the driver, cannot carry.
    return or_(Image.visibility == "public", Image.visibility == "community")


def visible_to(project_id: ColumnElement[str] | str) -> ColumnElement[bool]:
    """The project may see (show, download, boot) the image. `project_id` may be a bound
    parameter, so the compute service's one-statement validation can carry the rule."""
    if isinstance(project_id, str) and not project_id:
        return true()
    return or_(_open_to_all(), Image.owner == project_id, _membership(project_id))


def listed_for(
    project_id: str, visibility: str = "", member_status: str = ""
) -> ColumnElement[bool]:
    """The image is in the project's image list. `visibility` ("" for the default, or one
    of public, private, shared, community, all) and `member_status` ("" for accepted, or
    one of MEMBER_STATUS_FILTERS) are the list's filters, as Glance applies them: the
    member status narrows only the shared images the project is a member of, never its
    own. With no project (an admin), every image of the visibility asked for."""
    chosen: ColumnElement[bool] = (
        Image.visibility == visibility if visibility and visibility != "all" else true()
    )
    if not project_id:
        return chosen
    if not visibility:
        # Other projects' community images are listed only when asked for.
        chosen = or_(Image.visibility != "community", Image.owner == project_id)
    return and_(
        chosen,
        or_(
            _open_to_all(),
            Image.owner == project_id,
            _membership(project_id, member_status or "accepted"),
        ),
    )
