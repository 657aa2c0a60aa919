from importlib import import_module

from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import post_migrate
from django.utils.module_loading import autodiscover_modules


def create_definitions_after_migrate(sender, using, **kwargs):
    from .definitions import create_missing_definitions
    from .models import DefinitionsVersion

    # The version row is made by migration 0003; a flush (the tests') empties the table.
    DefinitionsVersion.objects.using(using).get_or_create(id=1)
    create_missing_definitions(using=using)


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs"

    def ready(self):
        from . import (
            checks,  # noqa: F401  (registers the system checks)
            schedule_changes,
        )

        schedule_changes.connect()

        # Job code lives in a `scheduled_jobs` module of any installed app, or in the modules
        # that SCHEDULER_JOB_MODULES names.
        autodiscover_modules("scheduled_jobs")
        for module in settings.SCHEDULER_JOB_MODULES:
            import_module(module)
        post_migrate.connect(create_definitions_after_migrate, sender=self)
