"""A definition's follow-ups (DefinitionFollowUp), and the upcoming one-off runs' index.

A write to jobs_definitionfollowup moves jobs_definitionsversion (and NOTIFYs, on PostgreSQL) as a write to a
definition, a schedule or a job policy does (migrations 0003 and 0009): running schedulers reload the
definitions, and plan the follow-ups onto the runs that come next. occ_oneoff_upcoming holds the live one-off
runs only.
"""

import django.db.models.deletion
from django.db import migrations, models


TABLE = "jobs_definitionfollowup"
POSTGRESQL = f"""
CREATE TRIGGER jobs_definitions_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {TABLE}
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_definitions_changed();
"""
SQLITE = [
    f"""CREATE TRIGGER jobs_version_on_{event.lower()}_{TABLE} AFTER {event} ON {TABLE} BEGIN
        UPDATE jobs_definitionsversion SET version = version + 1 WHERE id = 1;
    END"""
    for event in ("INSERT", "UPDATE", "DELETE")
]


def create_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRESQL, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE:
            schema_editor.execute(statement)


def drop_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP TRIGGER IF EXISTS jobs_definitions_changed ON {TABLE}", params=None)
    elif schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE:
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {statement.split()[2]}")


class Migration(migrations.Migration):
    dependencies = [
        ("django_celery_beat", "0019_alter_periodictasks_options"),
        ("jobs", "0012_one_off_runs"),
    ]

    operations = [
        migrations.CreateModel(
            name="DefinitionFollowUp",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "when",
                    models.CharField(
                        choices=[
                            ("succeeded", "succeeds"),
                            ("failed", "fails for good"),
                            ("cancelled", "is cancelled"),
                            ("finished", "ends, whatever the outcome"),
                        ],
                        default="succeeded",
                        max_length=16,
                        verbose_name="when this job",
                    ),
                ),
                ("job", models.CharField(help_text="A registered job.", max_length=200, verbose_name="run")),
                (
                    "payload",
                    models.JSONField(
                        blank=True,
                        help_text="A JSON object the follow-up sees as JobContext.payload; empty: none.",
                        null=True,
                    ),
                ),
            ],
            options={
                "verbose_name": "follow-up",
            },
        ),
        migrations.AddIndex(
            model_name="occurrence",
            index=models.Index(
                models.F("run_after"),
                models.F("id"),
                condition=models.Q(("status__in", ("scheduled", "running")), models.Q(("job", ""), _negated=True)),
                name="occ_oneoff_upcoming",
            ),
        ),
        migrations.AddField(
            model_name="definitionfollowup",
            name="task",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE,
                related_name="follow_ups",
                to="django_celery_beat.periodictask",
            ),
        ),
        migrations.AddConstraint(
            model_name="definitionfollowup",
            constraint=models.CheckConstraint(
                condition=models.Q(("when__in", ["succeeded", "failed", "cancelled", "finished"])),
                name="follow_up_when_valid",
            ),
        ),
        migrations.RunPython(create_triggers, drop_triggers),
    ]
