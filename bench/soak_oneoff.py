"""The soak's one-off runs (bench/soak.py): a client that schedules them under the faults, and their checks.

The client is a thread of the soak. Every 0.3 to 1 s it schedules through jobs.schedule (or
schedule_many) inside a transaction of its own, choosing from its seed: a run that commits; one
whose transaction it rolls back on purpose (it must never exist or run); one with a key out of two,
due 2 to 6 s ahead, so that repeated keys meet a live run (schedule() must return it); one with a
short expiry; a batch of three with schedule_many. About two runs in five are due up to 5 s ahead,
and two in five carry follow-ups (FollowUp of soak.oneoff for some of succeeded, failed, finished
and cancelled; the soak never cancels, so "cancelled" never matches). Payloads carry a marker, an
event, nested data and a failure rule (bench/soak_jobs.oneoff_fails). Before each PostgreSQL
restart the soak asks for six runs due 0.5 to 3 s later, each expiring 0.3 s after: those that fall
due while every scheduler is cut off from the database are recorded expired, the others run.

A call cut short by a fault (an OperationalError) leaves its outcome unknown: its marker may then
have one row or none, never two. So that some are, before each PostgreSQL restart the soak also
opens a transaction that schedules two runs and holds it open across the restart's beginning. The
checks are in check() (docs/reliability.md).
"""

import json
import random
import threading
import time
from collections import Counter, defaultdict
from datetime import timedelta

KEYS = 2
WHENS = ("succeeded", "failed", "finished", "cancelled")
# The final statuses each `when` of a follow-up matches (as docs/architecture.md says; computed here).
MATCHES = {
    "succeeded": {"succeeded"},
    "failed": {"failed"},
    "cancelled": {"skipped"},
    "finished": {"succeeded", "failed", "skipped", "missed", "expired"},
}
ONEOFF_POLICY = dict(max_retries=1, retry_intervals=[1])  # soak.oneoff's @job(retries=1, retry_intervals=[1])
# A held call: how long its transaction stays open after its runs are written (the restart's fast shutdown
# ends it within that), and how long the fault waits for it to be open before it goes ahead regardless.
HELD_SECONDS = 4.0
HELD_OPEN_WAIT = 5.0
TOLERANCE = timedelta(seconds=0.25)  # clock reads of different processes (each a DatabaseClock)


class Rollback(Exception):
    """Raised inside a schedule()'s transaction to roll it back on purpose."""


class OneOffClient(threading.Thread):
    """Schedules one-off runs as a BookWorm service would, in its own transactions, until stopped."""

    def __init__(self, soak, seed: int):
        super().__init__(name="oneoff-client", daemon=True)
        self.soak, self.rng = soak, random.Random(seed * 1000 + 13)
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.calls: list[dict] = []  # one per run asked for: marker, payload, key, then, outcome, id, ...
        self.errors: list[str] = []  # unexpected exceptions: the soak fails
        self.live_keys: list[str] = []  # a key seen with two live runs right after a schedule()
        self.key_races = 0
        self.serial = 0

    # ---- what to ask for

    def payload(self, fail_rule: bool = True) -> dict:
        self.serial += 1
        n = self.serial
        fail = self.rng.choice([None, None, None, "first", "always"]) if fail_rule else None
        data = {"n": n, "text": "café ☕ «soak»", "list": [n, n / 4, True, None], "nested": {"k": [1, {"v": "x"}]}}
        return {"marker": f"m{n}", "event": self.rng.choice(["clean", "resend"]), "fail": fail, "data": data}

    def follow_ups(self, marker: str) -> list[dict]:
        if self.rng.random() >= 0.4:
            return []
        whens = [w for w in WHENS if self.rng.random() < 0.6] or ["finished"]
        return [
            {
                "job": "soak.oneoff",
                "when": when,
                "payload": {
                    "marker": f"{marker}.{when}",
                    "event": self.rng.choice(["clean", "resend"]),
                    "fail": self.rng.choice([None, None, "first", "always"]),
                },
            }
            for when in whens
        ]

    def run_spec(self, now, kind: str) -> dict:
        payload = self.payload(fail_rule=kind != "expiring")
        spec = {"payload": payload, "key": None, "at": None, "expires": None}
        if kind == "keyed":
            spec["key"] = f"soak-key-{self.rng.randrange(KEYS)}"
            spec["at"] = now + timedelta(seconds=self.rng.uniform(2, 6))
        elif self.rng.random() < 0.4:
            spec["at"] = now + timedelta(seconds=self.rng.uniform(0.2, 5))
        if kind == "expiring":
            spec["expires"] = timedelta(seconds=self.rng.choice([0.01, 0.05, 0.2, 0.5, 2]))
        spec["then"] = self.follow_ups(payload["marker"])
        return spec

    # ---- asking

    def run(self) -> None:
        from django.db import connection

        try:
            while not self.stopping.is_set():
                kind = self.rng.choices(["plain", "keyed", "expiring", "rollback", "batch"], [35, 25, 15, 15, 10])[0]
                self.ask(kind, 3 if kind == "batch" else 1)
                self.stopping.wait(self.rng.uniform(0.3, 1.0))
        except Exception as exc:  # reported, and the soak fails
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()

    def before_outage(self) -> None:
        """Asked just before PostgreSQL restarts (its fast shutdown takes about a second, then it is down
        for one or two): six runs due 0.5 to 3 s later, each expiring 0.3 s after; those that fall due
        while no scheduler can reach the database expire, the others run. And a call whose transaction
        is open when the restart begins (held): the restart cuts it short, so its outcome is unknown."""
        self.ask("outage", 6, due=(0.5, 3.0), expires=0.3)
        opened = threading.Event()
        threading.Thread(target=self.held, args=(opened,), name="oneoff-held", daemon=True).start()
        opened.wait(HELD_OPEN_WAIT)

    def held(self, opened: threading.Event) -> None:
        """Two runs scheduled in a transaction held open for HELD_SECONDS after `opened` is set."""
        from django.db import connection

        try:
            self.ask("held", 2, hold=(opened, HELD_SECONDS))
        except Exception as exc:  # reported, and the soak fails
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            opened.set()
            connection.close()

    def ask(self, kind: str, count: int, due=None, expires=None, hold=None) -> None:
        from django.db import InterfaceError, OperationalError, connection, transaction

        from jobs import FollowUp, Run, schedule, schedule_many
        from jobs.engine.oneoff_store import KeyRace
        from jobs.models import OCCURRENCE_LIVE, Occurrence

        with self.lock:
            try:
                now = self.soak.db_now()
            except (OperationalError, InterfaceError):
                connection.close()
                return
            specs = [self.run_spec(now, "expiring" if kind == "outage" else kind) for _ in range(count)]
            if due is not None:
                for spec in specs:
                    spec["at"] = now + timedelta(seconds=self.rng.uniform(*due))
                    spec["expires"] = timedelta(seconds=expires)
            calls = [
                dict(
                    kind=kind,
                    marker=s["payload"]["marker"],
                    payload=s["payload"],
                    key=s["key"],
                    then=s["then"],
                    call_start=now,
                    outcome="unknown",
                    id=None,
                    new=None,
                )
                for s in specs
            ]
            self.calls.extend(calls)
            runs = [
                Run(
                    "soak.oneoff",
                    at=s["at"],
                    payload=s["payload"],
                    key=s["key"],
                    expires=s["expires"],
                    then=[FollowUp(**f) for f in s["then"]],
                )
                for s in specs
            ]
            try:
                with transaction.atomic():
                    if len(runs) > 1:
                        occurrences = schedule_many(runs, by="soak-client")
                    else:
                        r = runs[0]
                        occurrences = [
                            schedule(
                                r.job,
                                at=r.at,
                                payload=r.payload,
                                key=r.key,
                                expires=r.expires,
                                then=r.then,
                                by="soak-client",
                            )
                        ]
                    for call, occurrence in zip(calls, occurrences, strict=True):
                        call["id"] = occurrence.id
                        call["new"] = (occurrence.payload or {}).get("marker") == call["marker"]
                        call["returned_key"] = occurrence.key
                    if kind == "rollback":
                        raise Rollback()
                    if hold is not None:  # the transaction stays open while the fault begins
                        opened, seconds = hold
                        opened.set()
                        time.sleep(seconds)
            except Rollback:
                for call in calls:
                    call["outcome"] = "rolled back"
                return
            except KeyRace:
                self.key_races += 1
                for call in calls:
                    call["outcome"] = "rolled back"
                return
            except (OperationalError, InterfaceError):  # a fault cut it short: committed or not, unknown
                connection.close()
                if kind == "rollback":  # never committed, whatever cut it short
                    for call in calls:
                        call["outcome"] = "rolled back"
                return
            for call in calls:
                call["outcome"] = "committed"
            try:
                end = self.soak.db_now()
                for call in calls:
                    call["call_end"] = end
                    if call["key"]:
                        live = Occurrence.objects.filter(key=call["key"], status__in=OCCURRENCE_LIVE).count()
                        if live > 1:
                            self.live_keys.append(f"{call['key']}: {live} live runs after occurrence {call['id']}")
            except (OperationalError, InterfaceError):
                connection.close()


# --------------------------------------------------------------------------------------------
# The checks


def check(client: OneOffClient, attempts: dict, outbox: list[dict], received: list[dict], problems) -> dict:
    """Check the one-off runs and their follow-ups; add to problems; the figures."""
    from bench.soak_jobs import oneoff_fails
    from jobs.models import Occurrence

    fields = ("id", "job", "status", "attempts", "payload", "result", "key", "expires_at", "parent_id", "then")
    fields += ("created_at", "scheduled_for", "finished_at", "reason")
    rows = {o["id"]: o for o in Occurrence.objects.filter(task__isnull=True).exclude(job="").values(*fields)}
    by_marker = defaultdict(list)
    for o in rows.values():
        by_marker[(o["payload"] or {}).get("marker")].append(o)
    events = Counter(m["origin"] for m in outbox)
    receipts = defaultdict(list)
    for r in received:
        if r.get("occurrence") in rows:
            receipts[r["occurrence"]].append(r)

    # Every committed run has its row (one), none of a rolled-back one; a call cut short: one row or none.
    calls = client.calls
    parents = []
    for call in calls:
        found = by_marker.get(call["marker"], [])
        mine = [o for o in found if o["parent_id"] is None]
        if call["outcome"] == "rolled back":
            if mine or (call["id"] is not None and call["id"] in rows):
                problems["rolled-back one-off runs that exist"].append(f"{call['marker']} (occurrence {call['id']})")
            continue
        if len(mine) > 1:
            problems["one-off runs scheduled once, stored twice"].append(f"{call['marker']}: {[o['id'] for o in mine]}")
        if call["outcome"] == "committed":
            if call["new"] and not mine:
                problems["committed one-off runs with no row"].append(f"{call['marker']} (occurrence {call['id']})")
            if not call["new"] and mine:
                problems["a repeated key's call stored a run of its own"].append(call["marker"])
        if mine:
            parents.append((call, mine[0]))
    asked = {call["marker"] for call in calls}
    for o in rows.values():
        if o["parent_id"] is None and (o["payload"] or {}).get("marker") not in asked:
            problems["one-off runs nobody scheduled"].append(f"occurrence {o['id']}")

    # Final states; payloads and results round-trip; planned failures as the rule says.
    for o in rows.values():
        if o["status"] in ("scheduled", "running"):
            problems["one-off runs not final after settling"].append(f"occurrence {o['id']} {o['status']}")
        history = attempts.get(o["id"], [])
        for k, attempt in enumerate(history, start=1):
            if oneoff_fails(o["payload"] or {}, k) and attempt["status"] != "failed":
                problems["a planned one-off failure did not fail"].append(f"occurrence {o['id']} attempt {k}")
            elif not oneoff_fails(o["payload"] or {}, k) and "planned failure" in attempt["error"]:
                problems["an unplanned planned one-off failure"].append(f"occurrence {o['id']} attempt {k}")
        if o["status"] == "succeeded":
            if o["result"] != {"marker": o["payload"]["marker"], "attempt": o["attempts"]}:
                problems["one-off results that did not round-trip"].append(f"occurrence {o['id']}: {o['result']}")
            count = events.get(f"occurrence:{o['id']}", 0)
            if count != 1:
                problems["succeeded one-off runs without exactly one event"].append(f"occurrence {o['id']}: {count}")
            ids = {r["messageId"] for r in receipts[o["id"]]}
            if len(ids) != 1:
                problems["succeeded one-off runs not received exactly once"].append(f"occurrence {o['id']}: {ids}")
            for r in receipts[o["id"]]:
                if r.get("payload") != o["payload"] or r.get("attempt") != o["attempts"]:
                    problems["one-off events whose payload or attempt differ from the run's"].append(
                        f"occurrence {o['id']}: event {r.get('payload')} attempt {r.get('attempt')}, "
                        f"row {o['payload']} attempt {o['attempts']}"
                    )
    for call, o in parents:
        if o["payload"] != call["payload"]:
            problems["one-off payloads that did not round-trip"].append(f"occurrence {o['id']}: {o['payload']}")

    # Keys: one live run at a time; a repeated key got the live run.
    keyed = defaultdict(list)
    for call, o in parents:
        if call["key"]:
            keyed[call["key"]].append((call, o))
    problems["keys with two live runs at once (seen by the client)"].extend(client.live_keys)
    repeats = 0
    for key, pairs in keyed.items():
        pairs.sort(key=lambda pair: pair[1]["id"])
        for (_, before), (call, after) in zip(pairs, pairs[1:], strict=False):
            end = call.get("call_end") or after["created_at"]
            if before["finished_at"] is None or before["finished_at"] > end + TOLERANCE:
                problems["keys with two live runs at once"].append(
                    f"{key}: occurrence {after['id']} asked by {end.isoformat()}, occurrence {before['id']} "
                    f"finished {before['finished_at']}"
                )
    by_id = {o["id"]: o for o in rows.values()}
    for call in calls:
        if call["outcome"] != "committed" or not call["key"] or call["new"]:
            continue
        repeats += 1
        held = by_id.get(call["id"])
        end = call.get("call_end") or call["call_start"] + timedelta(seconds=5)
        if held is None or call["returned_key"] != call["key"] or held["key"] != call["key"]:
            problems["a repeated key returned another key's run"].append(f"{call['marker']}: occurrence {call['id']}")
        elif held["created_at"] > end + TOLERANCE or (
            held["finished_at"] is not None and held["finished_at"] < call["call_start"] - TOLERANCE
        ):
            problems["a repeated key returned a run that was not live"].append(
                f"{call['marker']}: occurrence {call['id']} created {held['created_at']}, finished "
                f"{held['finished_at']}, asked {call['call_start']} to {end}"
            )

    # Expiry: nothing started after it; an expired run has no attempt but failed ones before it.
    expired = expiring_ran = 0
    for o in rows.values():
        if o["expires_at"] is None:
            if o["status"] == "expired":
                problems["expired one-off runs without an expiry"].append(f"occurrence {o['id']}")
            continue
        history = attempts.get(o["id"], [])
        for attempt in history:
            if attempt["started_at"] > o["expires_at"] + TOLERANCE:
                problems["one-off runs started after their expiry"].append(
                    f"occurrence {o['id']} attempt {attempt['number']} at {attempt['started_at']}, "
                    f"expired {o['expires_at']}"
                )
        if o["status"] == "expired":
            expired += 1
            if any(a["status"] != "failed" for a in history):
                problems["expired one-off runs with an attempt that did not fail"].append(f"occurrence {o['id']}")
            if events.get(f"occurrence:{o['id']}"):
                problems["expired one-off runs with an event"].append(f"occurrence {o['id']}")
        elif o["status"] in ("succeeded", "failed"):
            expiring_ran += 1

    # Follow-ups: once per matching `when`, none for another; after the parent's end; each ran.
    follow_ups_expected = follow_ups_made = 0
    children = defaultdict(list)
    for o in rows.values():
        if o["parent_id"] is not None:
            children[o["parent_id"]].append(o)
    for call, parent in parents:
        made = Counter((child["payload"] or {}).get("marker") for child in children[parent["id"]])
        follow_ups_made += sum(made.values())
        wanted = {f["payload"]["marker"] for f in call["then"] if parent["status"] in MATCHES[f["when"]]}
        follow_ups_expected += len(wanted)
        for f in call["then"]:
            marker, count = f["payload"]["marker"], made.get(f["payload"]["marker"], 0)
            if marker in wanted and count != 1:
                problems["follow-ups of a matching when not created exactly once"].append(
                    f"occurrence {parent['id']} ({parent['status']}) {f['when']}: {count}"
                )
            if marker not in wanted and count:
                problems["follow-ups created for a when that did not match"].append(
                    f"occurrence {parent['id']} ({parent['status']}) {f['when']}: {count}"
                )
        for marker in set(made) - {f["payload"]["marker"] for f in call["then"]}:
            problems["follow-ups their parent did not ask for"].append(f"occurrence {parent['id']}: {marker}")
        for child in children[parent["id"]]:
            if parent["finished_at"] is None or child["created_at"] < parent["finished_at"]:
                problems["follow-ups created before their parent's end"].append(
                    f"occurrence {child['id']} created {child['created_at']}, parent {parent['id']} "
                    f"finished {parent['finished_at']}"
                )
            if child["status"] not in ("succeeded", "failed") or not child["attempts"]:
                problems["follow-ups that did not run"].append(f"occurrence {child['id']} {child['status']}")
            for r in receipts[child["id"]]:
                if r.get("parent") != parent["id"] or r.get("parentStatus") != parent["status"]:
                    problems["follow-ups that saw another parent"].append(
                        f"occurrence {child['id']}: parent {r.get('parent')} {r.get('parentStatus')}, "
                        f"row {parent['id']} {parent['status']}"
                    )
    problems["one-off client errors"].extend(client.errors)
    with open(client.soak.logs / "oneoff-calls.jsonl", "w") as record:  # what was asked, for a failure's evidence
        record.writelines(json.dumps(call, default=str) + "\n" for call in calls)
    outcomes = Counter(call["outcome"] for call in calls)
    return {
        "oneoff_asked": len(calls),
        "oneoff_committed": outcomes["committed"],
        "oneoff_rolled_back": outcomes["rolled back"],
        "oneoff_cut_short": outcomes["unknown"],
        "oneoff_held_across_a_restart": sum(1 for call in calls if call["kind"] == "held"),
        "oneoff_held_cut_short": sum(1 for call in calls if call["kind"] == "held" and call["outcome"] == "unknown"),
        "oneoff_key_repeats_given_the_live_run": repeats,
        "oneoff_key_races": client.key_races,
        "oneoff_expired": expired,
        "oneoff_expired_of_those_due_in_an_outage": sum(
            1 for call, o in parents if call["kind"] == "outage" and o["status"] == "expired"
        ),
        "oneoff_expiring_that_ran": expiring_ran,
        "oneoff_follow_ups_expected": follow_ups_expected,
        "oneoff_follow_ups_created": follow_ups_made,
        "oneoff_by_status": dict(Counter(o["status"] for o in rows.values())),
    }
