"""The console at /tickerq/: Django's admin site, in the operator's words rather than its apps'.

Django groups the admin's index and sidebar by installed app, named by each app's verbose_name,
and sorts apps and models alphabetically: the job definitions sat under django-celery-beat's
"Periodic tasks", beside its schedule tables, and django-axes' tables had a section of their own.
ConsoleSite.get_app_list lays the same rows out in sections of its own instead:

- Console (its heading links the overview): Jobs, History, Outbox, Schedulers, Relays, Alerts, Audit;
- Access: Users, Groups;
- then any other registered model, as Django would group it, so none goes missing unnoticed.

The schedule tables (crontabs, intervals, clocked, solar) and django-axes' tables are not listed.
They stay registered: the job form's interval and clocked fields link their pages, and a
superuser reaches any of them by its URL. An app's own page (/tickerq/<app_label>/) keeps
Django's grouping, with the same names and without the hidden tables.

The rows' names only change here; a model's pages take their titles ("Select job to change",
"Add job") from its own verbose_name, which ConsoleBeatConfig sets for PeriodicTask
(bookworm_scheduler/web/apps.py).
"""

from django.contrib import admin
from django.urls import reverse

# Each section: its name, the admin's URL its heading links (None: its first row's app page), and its rows
# as (model label, the row's name), in order.
SECTIONS = [
    (
        "Console",
        "index",
        [
            ("django_celery_beat.PeriodicTask", "Jobs"),
            ("jobs.Occurrence", "History"),
            ("outbox.OutboxMessage", "Outbox"),
            ("jobs.SchedulerInstance", "Schedulers"),
            ("outbox.RelayInstance", "Relays"),
            ("jobs.Alert", "Alerts"),
            ("admin.LogEntry", "Audit"),
        ],
    ),
    ("Access", None, [("auth.User", "Users"), ("auth.Group", "Groups")]),
]
ROW_NAMES = {label: name for _, _, rows in SECTIONS for label, name in rows}

# Registered, reachable by URL, never listed.
HIDDEN_APPS = {"axes"}
HIDDEN_MODELS = {
    "django_celery_beat.CrontabSchedule",
    "django_celery_beat.IntervalSchedule",
    "django_celery_beat.ClockedSchedule",
    "django_celery_beat.SolarSchedule",
}


def listed(row: dict) -> bool:
    opts = row["model"]._meta
    return opts.app_label not in HIDDEN_APPS and opts.label not in HIDDEN_MODELS


class ConsoleSite(admin.AdminSite):
    """admin.site (ConsoleAdminConfig.default_site): the console's titles, sections and names."""

    site_header = "BookWorm Scheduler"
    site_title = "BookWorm Scheduler"
    index_title = "Jobs, runs and outbox"
    site_url = None  # no "View site": the site is this console, and / redirects to its index

    def get_app_list(self, request, app_label=None):
        app_list = super().get_app_list(request, app_label)
        for app in app_list:
            app["models"] = [row for row in app["models"] if listed(row)]
            for row in app["models"]:
                row["name"] = ROW_NAMES.get(row["model"]._meta.label, row["name"])
        app_list = [app for app in app_list if app["models"]]
        if app_label is not None:
            return app_list
        return self.sections(request, app_list)

    def sections(self, request, app_list: list[dict]) -> list[dict]:
        rows = {row["model"]._meta.label: row for app in app_list for row in app["models"]}
        sections = []
        for name, url_name, labels in SECTIONS:
            models = [rows.pop(label) for label, _ in labels if label in rows]
            if not models:
                continue
            if url_name is None:
                kwargs = {"app_label": models[0]["model"]._meta.app_label}
                url = reverse(f"{self.name}:app_list", kwargs=kwargs, current_app=self.name)
            else:
                url = reverse(f"{self.name}:{url_name}", current_app=self.name)
            sections.append(
                {
                    "name": name,
                    "app_label": name.lower(),
                    "app_url": url,
                    "has_module_perms": True,
                    "models": models,
                }
            )
        for app in app_list:
            app["models"] = [row for row in app["models"] if row["model"]._meta.label in rows]
            if app["models"]:
                sections.append(app)
        return sections
