"""The history list refreshes its results table itself (htmx), keeping the page's query string."""

import html
import re

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db

HISTORY = "admin:jobs_occurrence_changelist"


def polling(page: str) -> dict:
    [tag] = re.findall(r'<div id="history-results"[^>]*>', page)
    return {name: html.unescape(value) for name, value in re.findall(r'([\w:-]+)="([^"]*)"', tag)}


def test_the_history_polls_its_own_url_with_the_query_string(admin_client):
    url = reverse(HISTORY) + "?status__exact=failed&p=1&o=-2"

    page = admin_client.get(url).content.decode()

    attributes = polling(page)
    assert attributes["hx-get"] == url
    assert attributes["hx-trigger"].startswith("every 5s")
    assert attributes["hx-select"] == "#history-results"
    assert attributes["hx-swap"] == "outerHTML"
    assert "htmx" in page and "<script" in page  # the htmx script is loaded


def test_the_history_polls_its_bare_url_without_a_query(admin_client):
    assert polling(admin_client.get(reverse(HISTORY)).content.decode())["hx-get"] == reverse(HISTORY)


def test_the_refreshs_answer_leaves_out_the_headers_zone_list(admin_client):
    page = admin_client.get(reverse(HISTORY)).content.decode()
    refresh = admin_client.get(reverse(HISTORY), HTTP_HX_REQUEST="true").content.decode()

    assert 'id="display-zone"' in page
    assert 'id="display-zone"' not in refresh and 'id="history-results"' in refresh
