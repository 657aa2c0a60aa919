"""A running occurrence's cancel request (who, when), and a scheduler instance's concurrency."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0009_notify_changes"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="occurrence",
            options={
                "ordering": ["-scheduled_for", "-id"],
                "permissions": [
                    ("run_job", "Can run a job now"),
                    ("retry_occurrence", "Can retry a failed occurrence"),
                    ("cancel_occurrence", "Can cancel an occurrence (a running one: ask it to stop)"),
                ],
            },
        ),
        migrations.AddField(
            model_name="occurrence",
            name="cancel_requested_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="occurrence",
            name="cancel_requested_by",
            field=models.CharField(blank=True, db_default="", max_length=150),
        ),
        migrations.AddField(
            model_name="schedulerinstance",
            name="concurrency",
            field=models.PositiveIntegerField(
                blank=True,
                help_text="At most this many occurrences at once: the pool's threads, or Celery's in flight.",
                null=True,
            ),
        ),
    ]
