"""Log formatting: one log event, one line.

Log collectors (docker logs, journald, Loki) take a line for an event, so an event that spans
lines (a psycopg error, a traceback) would be torn into pieces. OneLineFormatter renders a record
as logging.Formatter does, traceback and stack included, then writes each line feed as the two
characters \\n and each carriage return as \\r, the way JSON escapes them. Backslashes already
in the text are left alone: the line is for reading, not for parsing back; LOG_FORMAT=json is
for machines (python-json-logger escapes everything, exc_info and stack_info included).
"""

import logging

_ESCAPES = str.maketrans({"\n": "\\n", "\r": "\\r"})


class OneLineFormatter(logging.Formatter):
    """logging.Formatter with line breaks escaped, so that every record is one line."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).translate(_ESCAPES)
