"""Database triggers that keep the scheduler's own state true whatever path writes a definition.

- The planning cursor (jobs_planningcursor) follows each definition: created with it (from
  that moment), reset to the moment its schedule changes (its crontab, interval, clocked or
  solar row, or its start time), paused when it is disabled and resumed when enabled again,
  deleted with it. See PlanningCursor.
- jobs_definitionsversion.version moves on every write to a definition, a schedule or a job
  policy, so running schedulers reload within a second: the admin, QuerySet.update() and
  plain SQL alike.
- PostgreSQL sends NOTIFY jobs_occurrence when occurrences are inserted, so an idle scheduler
  claims at once (SQLite has no NOTIFY; one scheduler polls there).

Existing definitions get a cursor from their last planned instant (django-celery-beat's
last_run_at, which the scheduler used before) or their last change.
"""

from django.db import migrations
from django.utils import timezone

TASKS = "django_celery_beat_periodictask"
SCHEDULES = {
    "django_celery_beat_crontabschedule": "crontab_id",
    "django_celery_beat_intervalschedule": "interval_id",
    "django_celery_beat_clockedschedule": "clocked_id",
    "django_celery_beat_solarschedule": "solar_id",
}
DEFINITION_TABLES = [TASKS, *SCHEDULES, "jobs_jobpolicy"]
SCHEDULE_COLUMNS = ["crontab_id", "interval_id", "clocked_id", "solar_id", "start_time"]

POSTGRESQL = f"""
CREATE FUNCTION jobs_cursor_follow_definition() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO jobs_planningcursor (task_id, planned_through, paused_at, resumed_at)
        VALUES (NEW.id, now(), CASE WHEN NEW.enabled THEN NULL ELSE now() END, NULL)
        ON CONFLICT (task_id) DO UPDATE
            SET planned_through = EXCLUDED.planned_through, paused_at = EXCLUDED.paused_at, resumed_at = NULL;
    ELSIF TG_OP = 'DELETE' THEN
        DELETE FROM jobs_planningcursor WHERE task_id = OLD.id;
    ELSIF ({", ".join("NEW." + c for c in SCHEDULE_COLUMNS)})
          IS DISTINCT FROM ({", ".join("OLD." + c for c in SCHEDULE_COLUMNS)}) THEN
        UPDATE jobs_planningcursor
           SET planned_through = now(), paused_at = CASE WHEN NEW.enabled THEN NULL ELSE now() END, resumed_at = NULL
         WHERE task_id = NEW.id;
    ELSIF OLD.enabled AND NOT NEW.enabled THEN
        UPDATE jobs_planningcursor SET paused_at = COALESCE(paused_at, now()) WHERE task_id = NEW.id;
    ELSIF NEW.enabled AND NOT OLD.enabled THEN
        UPDATE jobs_planningcursor SET resumed_at = now() WHERE task_id = NEW.id;
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER jobs_cursor_follow_definition
    AFTER INSERT OR UPDATE OR DELETE ON {TASKS}
    FOR EACH ROW EXECUTE FUNCTION jobs_cursor_follow_definition();

CREATE FUNCTION jobs_cursor_follow_schedule() RETURNS trigger AS $$
BEGIN
    EXECUTE format(
        'UPDATE jobs_planningcursor c SET planned_through = now(), '
        'paused_at = CASE WHEN t.enabled THEN NULL ELSE now() END, resumed_at = NULL '
        'FROM {TASKS} t WHERE c.task_id = t.id AND t.%I = $1', TG_ARGV[0]
    ) USING NEW.id;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE FUNCTION jobs_definitions_changed() RETURNS trigger AS $$
BEGIN
    UPDATE jobs_definitionsversion SET version = version + 1 WHERE id = 1;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE FUNCTION jobs_notify_occurrence() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('jobs_occurrence', '');
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER jobs_occurrence_inserted
    AFTER INSERT ON jobs_occurrence
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_notify_occurrence();
""" + "".join(
    f"""
CREATE TRIGGER jobs_cursor_follow_schedule AFTER UPDATE ON {table}
    FOR EACH ROW EXECUTE FUNCTION jobs_cursor_follow_schedule('{column}');
"""
    for table, column in SCHEDULES.items()
) + "".join(
    f"""
CREATE TRIGGER jobs_definitions_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_definitions_changed();
"""
    for table in DEFINITION_TABLES
)

POSTGRESQL_DROP = (
    "".join(f"DROP TRIGGER IF EXISTS jobs_definitions_changed ON {table};\n" for table in DEFINITION_TABLES)
    + "".join(f"DROP TRIGGER IF EXISTS jobs_cursor_follow_schedule ON {table};\n" for table in SCHEDULES)
    + f"""
DROP TRIGGER IF EXISTS jobs_cursor_follow_definition ON {TASKS};
DROP TRIGGER IF EXISTS jobs_occurrence_inserted ON jobs_occurrence;
DROP FUNCTION IF EXISTS jobs_cursor_follow_definition();
DROP FUNCTION IF EXISTS jobs_cursor_follow_schedule();
DROP FUNCTION IF EXISTS jobs_definitions_changed();
DROP FUNCTION IF EXISTS jobs_notify_occurrence();
"""
)

# SQLite: row-level triggers only, one per event; its time in Django's stored format.
NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
SCHEDULE_CHANGED = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in SCHEDULE_COLUMNS)
SQLITE = [
    f"""CREATE TRIGGER jobs_cursor_on_insert AFTER INSERT ON {TASKS} BEGIN
        INSERT OR REPLACE INTO jobs_planningcursor (task_id, planned_through, paused_at, resumed_at)
        VALUES (NEW.id, {NOW}, CASE WHEN NEW.enabled THEN NULL ELSE {NOW} END, NULL);
    END""",
    f"""CREATE TRIGGER jobs_cursor_on_delete AFTER DELETE ON {TASKS} BEGIN
        DELETE FROM jobs_planningcursor WHERE task_id = OLD.id;
    END""",
    f"""CREATE TRIGGER jobs_cursor_on_schedule_change AFTER UPDATE ON {TASKS} WHEN {SCHEDULE_CHANGED} BEGIN
        UPDATE jobs_planningcursor
           SET planned_through = {NOW}, paused_at = CASE WHEN NEW.enabled THEN NULL ELSE {NOW} END, resumed_at = NULL
         WHERE task_id = NEW.id;
    END""",
    f"""CREATE TRIGGER jobs_cursor_on_disable AFTER UPDATE ON {TASKS}
        WHEN OLD.enabled AND NOT NEW.enabled AND NOT ({SCHEDULE_CHANGED}) BEGIN
        UPDATE jobs_planningcursor SET paused_at = COALESCE(paused_at, {NOW}) WHERE task_id = NEW.id;
    END""",
    f"""CREATE TRIGGER jobs_cursor_on_enable AFTER UPDATE ON {TASKS}
        WHEN NEW.enabled AND NOT OLD.enabled AND NOT ({SCHEDULE_CHANGED}) BEGIN
        UPDATE jobs_planningcursor SET resumed_at = {NOW} WHERE task_id = NEW.id;
    END""",
    *(
        f"""CREATE TRIGGER jobs_cursor_on_{column} AFTER UPDATE ON {table} BEGIN
        UPDATE jobs_planningcursor
           SET planned_through = {NOW},
               paused_at = (SELECT CASE WHEN t.enabled THEN NULL ELSE {NOW} END FROM {TASKS} t
                             WHERE t.id = jobs_planningcursor.task_id),
               resumed_at = NULL
         WHERE task_id IN (SELECT id FROM {TASKS} WHERE {column} = NEW.id);
    END"""
        for table, column in SCHEDULES.items()
    ),
    *(
        f"""CREATE TRIGGER jobs_version_on_{event.lower()}_{table} AFTER {event} ON {table} BEGIN
        UPDATE jobs_definitionsversion SET version = version + 1 WHERE id = 1;
    END"""
        for table in DEFINITION_TABLES
        for event in ("INSERT", "UPDATE", "DELETE")
    ),
]


def create(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PlanningCursor = apps.get_model("jobs", "PlanningCursor")
    DefinitionsVersion = apps.get_model("jobs", "DefinitionsVersion")
    now = timezone.now()
    PlanningCursor.objects.bulk_create(
        PlanningCursor(
            task_id=task.id,
            planned_through=task.last_run_at or task.date_changed,
            paused_at=None if task.enabled else now,
        )
        for task in PeriodicTask.objects.only("id", "last_run_at", "date_changed", "enabled")
    )
    DefinitionsVersion.objects.create(id=1, version=0)
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRESQL, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE:
            schema_editor.execute(statement)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRESQL_DROP, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE:
            name = statement.split()[2]
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [("jobs", "0002_own_cursor_clock_history"), ("django_celery_beat", "0019_alter_periodictasks_options")]

    operations = [migrations.RunPython(create, drop)]
