"""The scheduler's own CPU per grouped run, in one thread, against the local PostgreSQL (run by hand).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bookworm_scheduler \
        .venv/bin/python bench/run_cost.py [--runs 2000] [--rounds 5] [--group-seconds S] [--profile FILE]

The throughput of one runscheduler instance is bounded by its Python: its drain threads share
the GIL. This measures that cost alone, without the other threads and processes of the burst
benchmark (bench/scheduler_throughput.py): --runs manual occurrences of the bench job (publish
one outbox message) are drained by Scheduler.run_group in this thread, --rounds times, and the
process's CPU time (getrusage: user and system) is divided by the runs. PostgreSQL's CPU is not
in it; the host's noise is, much less than in a throughput figure. --profile FILE writes a
cProfile of the last round, timed by this thread's CPU clock. It creates (and drops at the end)
its own database, `<name>_bench_run_cost`.
"""

import argparse
import cProfile
import resource
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.database import scheduler_bench  # noqa: E402

DATABASE = scheduler_bench("_bench_run_cost")

from django.core.management import call_command  # noqa: E402
from django_celery_beat.models import IntervalSchedule, PeriodicTask  # noqa: E402

from jobs.engine import store  # noqa: E402
from jobs.engine.groups import GROUP_SECONDS  # noqa: E402
from jobs.engine.loop import Scheduler  # noqa: E402
from jobs.models import Attempt, Occurrence, Priority  # noqa: E402
from outbox.models import OutboxMessage  # noqa: E402


def drain(scheduler: Scheduler) -> int:
    ran = 0
    while True:
        done, alone_next = scheduler.run_group(scheduler.clock())
        assert not alone_next, "the bench job should join groups"
        if not done:
            return ran
        ran += done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--group-seconds",
        type=float,
        default=GROUP_SECONDS,
        help="how long a group may take (default: the scheduler's); a long one makes every group GROUP_RUNS runs, "
        "as under valgrind, where a run takes 50 times longer",
    )
    parser.add_argument("--profile", default="", help="write a cProfile of the last round to this file")
    options = parser.parse_args()

    call_command("migrate", verbosity=0)
    interval, _ = IntervalSchedule.objects.get_or_create(every=3600, period=IntervalSchedule.SECONDS)
    scheduler = Scheduler(
        instance_id="bench",
        concurrency=1,
        lease=timedelta(minutes=5),
        grace=timedelta(minutes=5),
        group_seconds=options.group_seconds,
    )
    # Enabled, so that the planner holds it as it holds a scheduler's definitions; first due in a day.
    start = scheduler.clock() + timedelta(days=1)
    task = PeriodicTask.objects.create(name="bench.publish", task="bench.publish", interval=interval, start_time=start)
    scheduler.planner.refresh()
    store.trigger(task, priority=Priority.NORMAL)
    assert scheduler.run_ready(scheduler.clock()) == 1  # seen once on its own: quick, so it joins groups

    per_run = []
    for round_ in range(options.rounds):
        now = scheduler.clock()
        Occurrence.objects.bulk_create(
            Occurrence(task=task, job_name=task.name, scheduled_for=now, run_after=now, manual=True)
            for _ in range(options.runs)
        )
        profile = cProfile.Profile(time.thread_time) if options.profile and round_ == options.rounds - 1 else None
        usage, wall = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        if profile:
            profile.enable()
        ran = drain(scheduler)
        if profile:
            profile.disable()
            profile.dump_stats(options.profile)
        wall, after = time.monotonic() - wall, resource.getrusage(resource.RUSAGE_SELF)
        user, system = after.ru_utime - usage.ru_utime, after.ru_stime - usage.ru_stime
        assert ran == options.runs, f"ran {ran} of {options.runs}"
        per_run.append((user + system) / ran * 1e6)
        print(
            f"round {round_ + 1}: {ran} runs; a run: {per_run[-1]:.0f} µs CPU ({user / ran * 1e6:.0f} user, "
            f"{system / ran * 1e6:.0f} system), {wall / ran * 1e6:.0f} µs wall"
        )
    assert OutboxMessage.objects.count() == options.runs * options.rounds + 1
    assert Attempt.objects.filter(status="succeeded").count() == options.runs * options.rounds + 1
    print(f"CPU per run: median {statistics.median(per_run):.0f} µs, min {min(per_run):.0f} µs")


if __name__ == "__main__":
    try:
        main()
    finally:
        DATABASE.drop()
