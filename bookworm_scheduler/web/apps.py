"""The app configurations that make the admin the operator's console (bookworm_scheduler/web/admin_site.py).

INSTALLED_APPS names them in place of django.contrib.admin and django_celery_beat: Django's own
way to give the default site a class of its own and a third-party app a name of its own. This
module imports no admin code at its top: app configurations are imported before the models are ready.
"""

from django.contrib.admin.apps import AdminConfig
from django_celery_beat.apps import BeatConfig


class ConsoleAdminConfig(AdminConfig):
    """django.contrib.admin, whose admin.site is a ConsoleSite, and whose log is the console's audit log.

    Its LogEntry is named "audit entry" as ConsoleBeatConfig names PeriodicTask (no migration), and
    its page is registered once every app's admin module is (bookworm_scheduler/web/audit_admin.py).
    """

    default_site = "bookworm_scheduler.web.admin_site.ConsoleSite"

    def ready(self):
        super().ready()
        entry = self.get_model("LogEntry")
        entry._meta.verbose_name = "audit entry"
        entry._meta.verbose_name_plural = "audit entries"
        from bookworm_scheduler.web import audit_admin  # noqa: F401 (registers the Audit page)


class ConsoleBeatConfig(BeatConfig):
    """django_celery_beat, named as the console names it: its PeriodicTask rows are the jobs, each called by its name.

    The app's name is the breadcrumbs' (Home > Jobs > Jobs > nightly). The model's names are
    every page's title and message ("Select job to change", "Add job", "The job ... was added"):
    set on its _meta at ready time, after the models are loaded. Migrations read a model's
    original Meta (ModelState.from_model: _meta.original_attrs), so no migration follows; a proxy
    model would need one, and its own URLs and permissions. A job's str() is its name, not
    django-celery-beat's "name: 0 * * * * (m/h/dM/MY/d) UTC": the breadcrumbs, the audit log
    and the foreign-key fields that show a job say only which one.
    """

    verbose_name = "Jobs"

    def ready(self):
        super().ready()
        task = self.get_model("PeriodicTask")
        task._meta.verbose_name = "job"
        task._meta.verbose_name_plural = "jobs"
        task.__str__ = job_name


def job_name(task) -> str:
    return task.name
