from importlib import import_module

from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import post_migrate
from django.utils.module_loading import autodiscover_modules


def create_definitions_after_migrate(sender, using, **kwargs):
    from jobs.engine.definitions import create_missing_definitions
    from jobs.models import DefinitionsVersion

    # The version row is made by migration 0003; a flush (the tests') empties the table.
    DefinitionsVersion.objects.using(using).get_or_create(id=1)
    create_missing_definitions(using=using)


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs"

    def ready(self):
        from jobs import checks  # noqa: F401  registers the system checks
        from jobs.engine import definition_changes
        from jobs.web import admin, token_admin  # noqa: F401  the admin's pages; a user's page with their API tokens

        definition_changes.connect()

        # Job code: the seed jobs, a `scheduled_jobs` module of any installed app, and the modules
        # that SCHEDULER_JOB_MODULES names.
        import_module("jobs.seed.jobs")
        autodiscover_modules("scheduled_jobs")
        for module in settings.SCHEDULER_JOB_MODULES:
            import_module(module)
        post_migrate.connect(create_definitions_after_migrate, sender=self)
