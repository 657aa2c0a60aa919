"""Before a definition's schedule changes, plan what its old schedule owes up to the change.

Connected to pre_save of PeriodicTask and of the four schedule models in JobsConfig.ready(),
so every save() (the admin, the API, the shell) catches up first. A QuerySet.update() or plain
SQL changes the schedule without this step: the cursor restarts from the change all the same,
and instants of the old schedule that no scheduler had planned yet are dropped.
"""

from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule

from jobs.engine.planning import plan_before_change

# The columns whose change restarts a definition's planning cursor (migration 0003's triggers).
TASK_SCHEDULE_FIELDS = ("crontab_id", "interval_id", "clocked_id", "solar_id", "start_time")
SCHEDULE_MODELS = {
    CrontabSchedule: "crontab",
    IntervalSchedule: "interval",
    ClockedSchedule: "clocked",
    SolarSchedule: "solar",
}


def _changed(instance, fields) -> bool:
    saved = type(instance).objects.filter(pk=instance.pk).values(*fields).first()
    return saved is not None and any(saved[field] != getattr(instance, field) for field in fields)


def definition_saving(sender, instance: PeriodicTask, raw=False, **kwargs) -> None:
    if raw or instance.pk is None or not _changed(instance, TASK_SCHEDULE_FIELDS):
        return
    plan_before_change(instance.pk)


def schedule_saving(sender, instance, raw=False, **kwargs) -> None:
    if raw or instance.pk is None:
        return
    fields = [field.attname for field in sender._meta.concrete_fields if not field.primary_key]
    if not _changed(instance, fields):
        return
    for task_id in PeriodicTask.objects.filter(**{SCHEDULE_MODELS[sender]: instance.pk}).values_list("id", flat=True):
        plan_before_change(task_id)


def connect() -> None:
    from django.db.models.signals import pre_save

    pre_save.connect(definition_saving, sender=PeriodicTask, dispatch_uid="jobs.definition_saving")
    for model in SCHEDULE_MODELS:
        pre_save.connect(schedule_saving, sender=model, dispatch_uid=f"jobs.schedule_saving.{model.__name__}")
