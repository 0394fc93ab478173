"""Structured logs: ``key=value`` text by default, one JSON object per line with ``format=json``.

In JSON, what a call passes in ``extra=`` (e.g. ``sop_uid``, ``study_uid``) becomes fields of the
object beside ``message``, so that log tools can filter on them without parsing the text.
"""

from __future__ import annotations

import json
import logging
import sys
import time

# The attributes every record has; any other came in through ``extra=`` and becomes a JSON field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
               "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def setup(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log duplicates ours at debug level; keep it for warnings only.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # pynetdicom logs every PDU and identifier at INFO; our dimse logger says what happened.
    if root.level > logging.DEBUG:
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
