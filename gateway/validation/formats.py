"""The `format` values Loom's schemas may use, each checked by one FormatChecker.

jsonschema checks ipv4 and ipv6 itself. The others are Loom's because they read as Nova
reads them, which no library does: a uuid with or without hyphens, a name of printable
characters with no whitespace at either end, a date-time in any ISO 8601 form (Nova
parses with `iso8601`, which takes no zone and a space for the T), and a URI that must
have a scheme and a host. A format missing here is refused by the strict meta-check, so
no schema can name one that is silently not checked.
"""

from __future__ import annotations

import unicodedata
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit

from jsonschema import FormatChecker


class InvalidName(ValueError):
    """A name that is not printable, or starts or ends with whitespace (Nova's words)."""

    def __init__(self) -> None:
        super().__init__(
            "An invalid 'name' value was provided. The name must be: printable characters."
            " Can not start or end with whitespace."
        )


# From jsonschema: its draft-4 ipv4 and ipv6 checks (the standard library's ipaddress).
FORMAT_CHECKER = FormatChecker(formats=("ipv4", "ipv6"))


@FORMAT_CHECKER.checks("uuid", raises=ValueError)
def is_uuid(value: object) -> bool:
    """32 hex digits, hyphens optional, any case (Nova's `is_uuid_like`)."""
    if not isinstance(value, str):
        return True
    return value.replace("-", "").lower() == uuid.UUID(value).hex


def _printable(char: str) -> bool:
    # Nova's rule: no control, format or unassigned characters, and of the separators only
    # the ordinary spaces (Zs); line and paragraph separators are not printable.
    category = unicodedata.category(char)
    return not category.startswith("C") and (not category.startswith("Z") or category == "Zs")


@FORMAT_CHECKER.checks("name", raises=InvalidName)
def is_name(value: object) -> bool:
    """Printable characters, not starting or ending with whitespace (Nova's `name`)."""
    if not isinstance(value, str):
        return True
    if not all(_printable(c) for c in value):
        raise InvalidName()
    if value and (value[0].isspace() or value[-1].isspace()):
        raise InvalidName()
    return True


def parse_date_time(value: str) -> datetime:
    """An ISO 8601 date and time, with or without a zone (as Nova parses `changes-since`),
    that is a moment in years 1 to 9999 in UTC too (where timestamps are kept); ValueError
    otherwise (`0001-01-01T00:00:00+01:00` is a moment before year 1)."""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is not None:
        try:
            moment.astimezone(UTC)
        except OverflowError:
            raise ValueError(f"{value} is out of range") from None
    return moment


@FORMAT_CHECKER.checks("date-time", raises=ValueError)
def is_date_time(value: object) -> bool:
    """See parse_date_time."""
    if not isinstance(value, str):
        return True
    parse_date_time(value)
    return True


@FORMAT_CHECKER.checks("uri", raises=ValueError)
def is_uri(value: object) -> bool:
    """An absolute URI: a scheme and a host, no whitespace (Nova requires both)."""
    if not isinstance(value, str):
        return True
    parts = urlsplit(value)
    return bool(parts.scheme and parts.netloc) and not any(c.isspace() for c in value)
