"""`manage.py` with every database connection traced by libpq, to count what it sends (run by hand).

    python bench/traced_manage.py TRACE_DIR runscheduler [options]

Each connection writes the protocol messages it exchanges to a file of its own in TRACE_DIR;
count_round_trips() reads them back: a statement is a CommandComplete (or an ErrorResponse),
a round trip a ReadyForQuery (one per simple query or per Sync, so a pipeline counts once).
Tracing costs time: bench/scheduler_throughput.py counts in a run of its own, not a timed one.
"""

import itertools
import os
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def count_round_trips(trace_dir: Path) -> Counter:
    """{"statements": n, "round_trips": n, "BEGIN": n, "COMMIT": n, ...} over every trace file."""
    counts: Counter = Counter()
    for path in trace_dir.glob("*.trace"):
        with path.open() as trace:
            for line in trace:
                direction, _, kind, *rest = line.rstrip("\n").split("\t") + ["", "", ""]
                if direction != "B":  # a message the server sent (or a line a long message wrapped)
                    continue
                if kind in ("CommandComplete", "ErrorResponse"):
                    counts["statements"] += 1
                    tag = rest[0].strip().strip('"').split(" ")[0] if rest else ""
                    counts[tag or kind] += 1
                elif kind == "ReadyForQuery":
                    counts["round_trips"] += 1
    return counts


def main() -> None:
    trace_dir = Path(sys.argv.pop(1))
    trace_dir.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bookworm_scheduler.settings")
    from django.db.backends.signals import connection_created
    from psycopg import pq

    files, numbers = [], itertools.count()

    def trace(sender, connection, **kwargs):
        handle = open(trace_dir / f"{os.getpid()}-{next(numbers)}.trace", "w")  # noqa: SIM115 (kept open)
        files.append(handle)
        pgconn = connection.connection.pgconn
        pgconn.trace(handle.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    connection_created.connect(trace)
    from django.core.management import execute_from_command_line

    execute_from_command_line([str(ROOT / "manage.py"), *sys.argv[1:]])


if __name__ == "__main__":
    main()
