"""Staff users and their Basic credentials, for the API's tests."""

import base64

from django.contrib.auth.models import Permission, User

PASSWORD = "a-long-pass-phrase"


def staff(*permissions, username="script") -> User:
    """A staff user with these permissions ("app_label.codename") and PASSWORD."""
    user = User.objects.create_user(username, password=PASSWORD, is_staff=True)
    for permission in permissions:
        app_label, codename = permission.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return user


def basic(username="script") -> dict:
    """The test client's keyword for an Authorization header with username's Basic credentials."""
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(f"{username}:{PASSWORD}".encode()).decode()}
