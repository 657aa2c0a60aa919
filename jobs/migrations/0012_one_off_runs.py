"""One-off runs of registered jobs (jobs.engine.oneoff) and the expired status.

Nullable columns, and text columns with a database default, cost no rewrite of jobs_occurrence. The
key's unique index and the parent's index are partial: only keyed live runs and follow-ups are in
them. The status check and occ_finished (whose condition lists the finished statuses) are made again
with `expired`; that check is validated, and that index built, over the table once.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_celery_beat", "0019_alter_periodictasks_options"),
        ("jobs", "0011_state_words"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="occurrence",
            name="occurrence_status_valid",
        ),
        migrations.RemoveIndex(
            model_name="occurrence",
            name="occ_finished",
        ),
        migrations.AddField(
            model_name="occurrence",
            name="expires_at",
            field=models.DateTimeField(blank=True, help_text="Not started by then: expired, never run.", null=True),
        ),
        migrations.AddField(
            model_name="occurrence",
            name="job",
            field=models.CharField(blank=True, db_default="", max_length=200),
        ),
        migrations.AddField(
            model_name="occurrence",
            name="key",
            field=models.CharField(blank=True, db_default="", max_length=200),
        ),
        migrations.AddField(
            model_name="occurrence",
            name="parent",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="children",
                to="jobs.occurrence",
            ),
        ),
        migrations.AddField(
            model_name="occurrence",
            name="payload",
            field=models.JSONField(
                blank=True, help_text="A one-off run's JSON object (JobContext.payload).", null=True
            ),
        ),
        migrations.AddField(
            model_name="occurrence",
            name="result",
            field=models.JSONField(blank=True, help_text="What the job returned, when it succeeded.", null=True),
        ),
        migrations.AddField(
            model_name="occurrence",
            name="then",
            field=models.JSONField(blank=True, help_text="Follow-ups to create when it ends.", null=True),
        ),
        migrations.AlterField(
            model_name="occurrence",
            name="status",
            field=models.CharField(
                choices=[
                    ("scheduled", "scheduled"),
                    ("running", "running"),
                    ("succeeded", "succeeded"),
                    ("failed", "failed"),
                    ("skipped", "skipped"),
                    ("missed", "missed"),
                    ("expired", "expired"),
                ],
                default="scheduled",
                max_length=16,
            ),
        ),
        migrations.AddIndex(
            model_name="occurrence",
            index=models.Index(condition=models.Q(("parent__isnull", False)), fields=["parent"], name="occ_parent"),
        ),
        migrations.AddIndex(
            model_name="occurrence",
            index=models.Index(
                condition=models.Q(("status__in", ("succeeded", "failed", "skipped", "missed", "expired"))),
                fields=["finished_at"],
                name="occ_finished",
            ),
        ),
        migrations.AddConstraint(
            model_name="occurrence",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("status__in", ["scheduled", "running", "succeeded", "failed", "skipped", "missed", "expired"])
                ),
                name="occurrence_status_valid",
            ),
        ),
        migrations.AddConstraint(
            model_name="occurrence",
            constraint=models.UniqueConstraint(
                condition=models.Q(("status__in", ("scheduled", "running")), models.Q(("key", ""), _negated=True)),
                fields=("key",),
                name="occurrence_key_once_live",
            ),
        ),
    ]
