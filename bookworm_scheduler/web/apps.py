"""The app configurations that make the admin the operator's console (bookworm_scheduler/web/admin_site.py).

INSTALLED_APPS names them in place of django.contrib.admin and django_celery_beat: Django's own
way to give the default site a class of its own and a third-party app a name of its own. This
module imports no admin code: app configurations are imported before the models are ready.
"""

from django.contrib.admin.apps import AdminConfig
from django_celery_beat.apps import BeatConfig


class ConsoleAdminConfig(AdminConfig):
    """django.contrib.admin, whose admin.site is a ConsoleSite."""

    default_site = "bookworm_scheduler.web.admin_site.ConsoleSite"


class ConsoleBeatConfig(BeatConfig):
    """django_celery_beat, named as the console names it: its PeriodicTask rows are the jobs.

    The app's name is the breadcrumbs' (Home > Jobs > Jobs > nightly). The model's names are
    every page's title and message ("Select job to change", "Add job", "The job ... was added"):
    set on its _meta at ready time, after the models are loaded. Migrations read a model's
    original Meta (ModelState.from_model: _meta.original_attrs), so no migration follows; a proxy
    model would need one, and its own URLs and permissions.
    """

    verbose_name = "Jobs"

    def ready(self):
        super().ready()
        task = self.get_model("PeriodicTask")
        task._meta.verbose_name = "job"
        task._meta.verbose_name_plural = "jobs"
