"""UID syntax checks (PS3.5 §9.1): digits and dots, components without leading zeros, 64 chars max.

Every UID that arrives in a URL, a query or a data set passes :func:`is_valid_uid` before it is
used in a storage key, an SQL parameter or a log line.
"""

from __future__ import annotations

import re

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def is_valid_uid(value: object) -> bool:
    """True for a syntactically valid UID (at least two components, as every real root has)."""
    return isinstance(value, str) and 0 < len(value) <= 64 and _UID_RE.fullmatch(value) is not None
