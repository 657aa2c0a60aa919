"""The console's names and furniture: sections and rows in the operator's words, the schedule and
django-axes tables out of the lists (yet reachable), no "View site", an icon (bookworm_scheduler/web/admin_site.py)."""

import re
import urllib.request

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.core.management import call_command

pytestmark = pytest.mark.django_db

CONSOLE = ["Jobs", "History", "Outbox", "Schedulers", "Relays", "Alerts", "Audit"]
PASSWORD = "a-long-password"


def sections(html: str) -> list[tuple[str, list[str]]]:
    """The app list's sections in order, each with its rows' names."""
    found = []
    for body in re.findall(r'<div class="app-[\w-]+ module[^"]*">(.*?)</table>', html, re.S):
        (name,) = re.findall(r'class="section"[^>]*>([^<]*)</a>', body)
        rows = re.findall(r'<th scope="row" id="[^"]+">\s*<a href="[^"]+"[^>]*>([^<]*)</a>', body)
        found.append((name, rows))
    return found


def sidebar(html: str) -> str:
    start = html.index('id="nav-sidebar"')
    return html[start : html.index("</nav>", start)]


def test_the_index_lists_the_console_then_access(admin_client):
    page = admin_client.get("/tickerq/").content.decode()

    assert sections(page) == [("Console", CONSOLE), ("Access", ["Users", "Groups"])]
    assert '<a href="/tickerq/" class="section"' in page  # the Console heading is the overview
    assert '<a href="/tickerq/django_celery_beat/periodictask/">Jobs</a>' in page
    assert '<a href="/tickerq/jobs/occurrence/">History</a>' in page


def test_the_sidebar_lists_the_same_sections(admin_client):
    page = admin_client.get("/tickerq/jobs/occurrence/").content.decode()

    assert sections(sidebar(page)) == [("Console", CONSOLE), ("Access", ["Users", "Groups"])]


@pytest.mark.parametrize(
    "hidden",
    [
        "Periodic tasks",
        "Crontabs",
        "Intervals",
        "Clocked",
        "Solar events",
        "Access attempts",
        "Access logs",
        "Access failures",
        "Scheduler instances",
        "Occurrences",
    ],
)
def test_neither_list_names_a_hidden_table_or_an_old_name(admin_client, hidden):
    index = admin_client.get("/tickerq/").content.decode()
    page = admin_client.get("/tickerq/outbox/outboxmessage/").content.decode()

    assert f">{hidden}<" not in index and f">{hidden}<" not in sidebar(page)


@pytest.mark.parametrize(
    "url",
    [
        "/tickerq/django_celery_beat/crontabschedule/",
        "/tickerq/django_celery_beat/intervalschedule/",
        "/tickerq/django_celery_beat/clockedschedule/",
        "/tickerq/axes/accessattempt/",
        "/tickerq/axes/accesslog/",
        "/tickerq/axes/accessfailurelog/",
    ],
)
def test_the_hidden_tables_stay_reachable_by_url(admin_client, url):
    assert admin_client.get(url).status_code == 200


def test_the_job_form_still_links_the_interval_and_clocked_pages(admin_client):
    page = admin_client.get("/tickerq/django_celery_beat/periodictask/add/").content.decode()

    assert 'href="/tickerq/django_celery_beat/intervalschedule/add/?_to_field=id&amp;_popup=1"' in page
    assert 'href="/tickerq/django_celery_beat/clockedschedule/add/?_to_field=id&amp;_popup=1"' in page


def test_a_view_only_user_sees_only_what_they_may_view(client):
    user = User.objects.create_user("viewer", password=PASSWORD, is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(codename__in=["view_periodictask", "view_occurrence", "view_outboxmessage"])
    )
    client.force_login(user)

    assert sections(client.get("/tickerq/").content.decode()) == [("Console", ["Jobs", "History", "Outbox"])]


def test_the_job_pages_say_job(admin_client):
    changelist = admin_client.get("/tickerq/django_celery_beat/periodictask/").content.decode()
    add = admin_client.get("/tickerq/django_celery_beat/periodictask/add/").content.decode()

    assert "<title>Select job to change | BookWorm Scheduler</title>" in changelist
    assert "<h1>Select job to change</h1>" in changelist
    assert re.search(r'class="addlink">\s*Add job\s*</a>', changelist)
    assert "<title>Add job | BookWorm Scheduler</title>" in add and "<h1>Add job</h1>" in add
    assert '&rsaquo; <a href="/tickerq/django_celery_beat/">Jobs</a>' in add
    assert "periodic task" not in changelist.lower() and "periodic task" not in add.lower()


def test_an_apps_own_page_uses_the_console_names(admin_client):
    beat = admin_client.get("/tickerq/django_celery_beat/").content.decode()
    jobs = admin_client.get("/tickerq/jobs/").content.decode()

    assert "<h1>Jobs administration</h1>" in beat
    assert sections(beat[beat.index('id="content-main"') :]) == [("Jobs", ["Jobs"])]
    assert sections(jobs[jobs.index('id="content-main"') :]) == [("Jobs", ["Alerts", "History", "Schedulers"])]


def test_renaming_the_job_model_needs_no_migration():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


def test_there_is_no_view_site_link(admin_client):
    page = admin_client.get("/tickerq/").content.decode()

    assert admin.site.site_url is None
    assert "View site" not in page
    assert "View site" not in admin_client.get("/tickerq/jobs/occurrence/").content.decode()


def test_every_console_page_links_the_icon(admin_client, client):
    icon = '<link rel="icon" href="/static/jobs/favicon.svg" type="image/svg+xml">'

    assert icon in admin_client.get("/tickerq/").content.decode()
    assert icon in admin_client.get("/tickerq/django_celery_beat/periodictask/add/").content.decode()
    assert icon in client.get("/tickerq/login/").content.decode()


def test_favicon_ico_redirects_to_the_icon(client):
    response = client.get("/favicon.ico")

    assert response.status_code == 302
    assert response["Location"] == "/static/jobs/favicon.svg"


def test_the_icon_is_served(live_server):
    # The live server serves static files as runserver and whitenoise do; the test client does not.
    with urllib.request.urlopen(f"{live_server.url}/favicon.ico") as response:
        assert response.status == 200
        assert response.url == f"{live_server.url}/static/jobs/favicon.svg"
        assert response.headers["Content-Type"] == "image/svg+xml"
        assert response.read().startswith(b'<svg xmlns="http://www.w3.org/2000/svg"')
