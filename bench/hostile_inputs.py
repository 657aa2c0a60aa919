"""Inputs crafted to be slow, timed: cron expressions, zone names, payloads and API bodies (run by hand).

    flock /tmp/bookworm-machine.lock env DEBUG=1 DATABASE_URL=sqlite://:memory: \
        .venv/bin/python bench/hostile_inputs.py [--runs 5]

Each input goes through the code that a request, a form or a command line hands it to:
jobs.engine.schedules.validate_cron (the admin's forms, `jobs preview`, @job and planning) and the
next five instants of cron_instants (the form's live preview), get_zone (a definition's zone, the
command line's --zone), jobs.engine.oneoff.check_payload (jobs.schedule, the API, the dashboard's
Schedule a run), and an API body as the schedule endpoint reads it (json.loads, the ScheduleRequest
schema, check_payload, check_follow_ups), at the largest size the API takes (API_BODY_MAX_BYTES). The cron and zone
inputs are made unique per run, so validate_cron's cache never answers. Each input's worst time of
--runs (seconds, with its outcome: accepted, or the first words of its refusal) is printed, then
the worst of all. No database is touched.

docs/benchmarks.md ("Hostile inputs") reports the figures.
"""

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bookworm_scheduler.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from jobs.engine.oneoff import ScheduleError, check_follow_ups, check_payload  # noqa: E402
from jobs.engine.schedules import InvalidSchedule, cron_instants, get_zone, next_instants, validate_cron  # noqa: E402
from jobs.web.serializers import ScheduleRequest  # noqa: E402

AFTER = datetime(2026, 1, 1, tzinfo=UTC)


def nested(depth: int) -> dict:
    payload: dict = {}
    for _ in range(depth):
        payload = {"a": payload}
    return payload


def cron_cases(run: int) -> dict[str, str]:
    minute = str(run % 60)  # one field differs per run: validate_cron's cache never answers
    every_value = ",".join(str(m) for m in range(60))
    return {
        "0 0 31 2 * (never fires)": f"{minute} 0 31 2 *",
        "0 0 30 2 * (never fires)": f"{minute} 0 30 2 *",
        "0 0 29 2 * (every 4 years)": f"{minute} 0 29 2 *",
        "0 0 29 2 1 (Feb 29 or a Monday of Feb)": f"{minute} 0 29 2 1",
        "59 23 31 12 * (once a year, last minute)": f"{minute} 23 31 12 *",
        "every value listed in every field": f"{every_value} {','.join(map(str, range(24)))} "
        f"{','.join(map(str, range(1, 32)))} {','.join(map(str, range(1, 13)))} 0,1,2,3,4,5,6,{minute}",
        "a 10,000-item step list": ",".join(["*/1"] * 10_000) + f" * * * {run % 7}",
        "a 1 MB expression": "1," * 500_000 + f"{minute} * * * *",
        "a huge range 0-99999999": f"0-99999999 * * * {run % 7}",
        "a huge step */99999999": f"*/99999999 * * * {run % 7}",
        "a 1 MB macro": "@" + "x" * 1_000_000 + str(run),
        "a 100 kB word as the fields": "x" * 100_000 + f" {minute} * * *",
    }


def zone_cases(run: int) -> dict[str, str]:
    return {
        "a 100 kB zone name": "Europe/" + "x" * 100_000 + str(run),
        "a 1 MB zone name": "A" * 1_000_000 + str(run),
        "a path out of the tz database": "../../../../etc/passwd" + "/.." * run,
        "a near miss": f"Europe/Pari{run}",
    }


def payload_cases(run: int) -> dict[str, object]:
    limit = settings.SCHEDULER_PAYLOAD_MAX_BYTES
    return {
        "nested 20 deep": nested(20),
        "nested 900 deep": nested(900),
        "nested 5,000 deep": nested(5_000),
        "the largest string": {"s": "x" * (limit - 20)},
        "the most keys": {f"k{i}": 0 for i in range(limit // 13)},
    }


def body_cases(run: int) -> dict[str, bytes]:
    limit = settings.API_BODY_MAX_BYTES
    return {
        "a body of the largest size, one string": json.dumps({"payload": {"s": "x" * (limit - 30)}}).encode(),
        "a body of the largest size, nested lists": (b'{"payload": {"a": ' + b"[" * (limit // 2 - 20))
        + b"]" * (limit // 2 - 20)
        + b"}}",
        "a body of the largest size, many follow-ups": json.dumps(
            {"then": [{"job": "j"}] * ((limit - 20) // 16)}
        ).encode()[:limit],
        "a body of the largest size, many unknown fields": json.dumps(
            {f"x{i}": 0 for i in range((limit - 20) // 13)}
        ).encode(),
    }


def timed(function, value) -> tuple[float, str]:
    start = time.perf_counter()
    try:
        function(value)
        outcome = "accepted"
    except (InvalidSchedule, ScheduleError, ValidationError, ValueError, RecursionError) as exc:
        outcome = "refused: " + " ".join(str(exc).split())[:70]
    return time.perf_counter() - start, outcome


def read_body(body: bytes):
    """What the API's schedule endpoint does with a body before any database work, its refusal's message included."""
    assert len(body) <= settings.API_BODY_MAX_BYTES, len(body)
    data = json.loads(body)
    try:
        request = ScheduleRequest.model_validate(data)
    except ValidationError as exc:
        raise ValueError(ScheduleRequest.refusal(exc.errors())) from None
    check_payload(request.payload)
    check_follow_ups([follow_up.model_dump() for follow_up in request.then])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    groups = [
        ("cron: validate_cron", cron_cases, validate_cron),
        ("cron: the next five instants", cron_cases, lambda e: next_instants(cron_instants(e, "UTC", AFTER), 5)),
        ("zone: get_zone", zone_cases, get_zone),
        ("payload: check_payload", payload_cases, check_payload),
        ("API body: read as the schedule endpoint does", body_cases, read_body),
    ]
    worst_of_all = (0.0, "")
    print(
        f"worst of {runs} runs, in seconds (API_BODY_MAX_BYTES={settings.API_BODY_MAX_BYTES}, "
        f"SCHEDULER_PAYLOAD_MAX_BYTES={settings.SCHEDULER_PAYLOAD_MAX_BYTES})"
    )
    for title, cases, function in groups:
        print(f"\n{title}")
        names = list(cases(0))
        for name in names:
            times, outcome = [], ""
            for run in range(runs):
                seconds, outcome = timed(function, cases(run)[name])
                times.append(seconds)
            worst = max(times)
            print(f"  {worst:9.4f}  {name:48}  {outcome}")
            worst_of_all = max(worst_of_all, (worst, f"{title}: {name}"))
    print(f"\nworst of all: {worst_of_all[0]:.4f} s ({worst_of_all[1]})")


if __name__ == "__main__":
    main()
