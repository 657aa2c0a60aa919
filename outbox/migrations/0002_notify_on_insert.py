"""Wake the relay when outbox rows commit: PostgreSQL sends NOTIFY outbox at commit.

A statement-level trigger, so the notification rides on the INSERT that publish() already
sends instead of costing a round trip of its own. SQLite has no NOTIFY; the relay polls there.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION outbox_notify_relay() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER outbox_message_inserted
    AFTER INSERT ON outbox_outboxmessage
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify_relay();
"""

DROP = """
DROP TRIGGER IF EXISTS outbox_message_inserted ON outbox_outboxmessage;
DROP FUNCTION IF EXISTS outbox_notify_relay();
"""


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("outbox", "0001_initial")]

    operations = [migrations.RunPython(create, drop)]
