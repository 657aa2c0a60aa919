"""NOTIFY jobs_occurrence on the other changes a waiting scheduler must see at once.

Until now only inserted occurrences notified, and schedulers polled every second for the rest.
Now, so that a scheduler can sleep until its next instant and poll rarely:
- a definition, schedule or job policy written by any path (the statement trigger that moves
  jobs_definitionsversion) notifies with the payload 'definitions';
- an occurrence that becomes scheduled again (a retry recorded by a Celery worker or by the
  reaper, a claim released, the admin's retry) notifies with the payload 'scheduled'.
SQLite has no NOTIFY; a scheduler there polls every second.
"""

from django.db import migrations

POSTGRESQL = """
CREATE OR REPLACE FUNCTION jobs_definitions_changed() RETURNS trigger AS $$
BEGIN
    UPDATE jobs_definitionsversion SET version = version + 1 WHERE id = 1;
    PERFORM pg_notify('jobs_occurrence', 'definitions');
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE FUNCTION jobs_notify_scheduled() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('jobs_occurrence', 'scheduled');
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER jobs_occurrence_scheduled_again
    AFTER UPDATE OF status ON jobs_occurrence
    FOR EACH ROW WHEN (NEW.status = 'scheduled' AND OLD.status <> 'scheduled')
    EXECUTE FUNCTION jobs_notify_scheduled();
"""

POSTGRESQL_REVERSE = """
DROP TRIGGER IF EXISTS jobs_occurrence_scheduled_again ON jobs_occurrence;
DROP FUNCTION IF EXISTS jobs_notify_scheduled();
CREATE OR REPLACE FUNCTION jobs_definitions_changed() RETURNS trigger AS $$
BEGIN
    UPDATE jobs_definitionsversion SET version = version + 1 WHERE id = 1;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRESQL)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRESQL_REVERSE)


class Migration(migrations.Migration):
    dependencies = [("jobs", "0008_history_filter_indexes")]

    operations = [migrations.RunPython(forwards, backwards)]
