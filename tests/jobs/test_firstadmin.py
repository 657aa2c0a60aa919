import re
from io import StringIO

import pytest
from django.contrib.auth import authenticate
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import RequestFactory

pytestmark = pytest.mark.django_db


def firstadmin() -> str:
    out = StringIO()
    call_command("firstadmin", stdout=out)
    return out.getvalue()


def test_it_creates_an_admin_with_a_random_password_printed_once():
    output = firstadmin()
    password = re.search(r"password: (\S+)", output).group(1)
    assert len(password) == 20
    user = User.objects.get()
    assert user.username == "admin" and user.is_superuser and user.is_staff and user.is_active
    request = RequestFactory().post("/tickerq/login/")
    assert authenticate(request=request, username="admin", password=password) == user


def test_it_creates_nothing_and_prints_no_password_when_a_superuser_exists():
    firstadmin()
    output = firstadmin()
    assert User.objects.count() == 1
    assert "password" not in output and "superuser exists" in output


def test_two_databases_get_different_passwords():
    first = re.search(r"password: (\S+)", firstadmin()).group(1)
    User.objects.all().delete()
    second = re.search(r"password: (\S+)", firstadmin()).group(1)
    assert first != second


def test_an_existing_admin_without_rights_is_left_alone():
    User.objects.create_user("admin", password="a-long-password")
    output = firstadmin()
    assert "password" not in output and "createsuperuser" in output
    user = User.objects.get()
    assert not user.is_superuser and user.check_password("a-long-password")
