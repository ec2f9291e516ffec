"""The UBI (User Behavior Insights) schema as this package writes and reads it: the request's
``ext.ubi`` fields, the limits on ids and texts, and the timestamp format."""

from __future__ import annotations

from datetime import UTC, datetime

#: the ``ext`` section UBI reads and answers
EXT_NAME = "ubi"
REQUEST_FIELDS = (
    "query_id",
    "user_query",
    "client_id",
    "user_id",
    "application",
    "query_attributes",
    "object_id_field",
)
#: UBI's limit on ids (``maxLength`` 100 in the schema, ``ignore_above`` 100 in the mapping)
MAX_ID_CHARS = 100
MAX_USER_QUERY_CHARS = 4096
MAX_QUERY_CHARS = 10_000
#: the only ``object_id_field`` the proxy records: hit ids are ``_id``
OBJECT_ID_FIELD = "_id"


def ubi_timestamp(when: datetime) -> str:
    """UTC with milliseconds and ``Z`` (UBI's ``strict_date_time``)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
