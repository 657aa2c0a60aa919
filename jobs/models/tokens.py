"""API tokens: what a script sends as `Authorization: Bearer <token>` instead of a staff user's password.

A token is "bws_<id>_<secret>": id is twelve hex characters, stored as they are to find the row,
secret 32 random bytes (43 URL-safe characters). Only the SHA-256 of the whole token is stored:
the token itself is shown once, when it is issued, and cannot be read back. A plain hash, not a
password hasher, because the secret is random and long: nothing is gained by slowing a guess of
256 bits down, and each API request checks one.

A token acts as its user, with the user's permissions at the time of the request; a read-only
one may only read (jobs.web.tokens refuses it any other method). It may expire; revoked, it is
kept (revoked_at) so the list and the audit log still say which one it was.

A model of our own: the kept-up token libraries (django-rest-knox, djangorestframework-api-key) are
built on Django REST framework, which the API does not use; django-ninja's HttpBearer reads the header.
"""

import hashlib
import re
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.utils.crypto import constant_time_compare

PREFIX = "bws_"
ID_BYTES = 6  # twelve hex characters
SECRET_BYTES = 32
TOKEN_PATTERN = re.compile(r"bws_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")
# last_used_at is written at most once per this many seconds of a token's use: one UPDATE, not one per request.
LAST_USED_EVERY_SECONDS = 60


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiTokenQuerySet(models.QuerySet):
    def issue(
        self, user, *, name: str, read_only: bool, expires_days: int | None, now: datetime
    ) -> tuple["ApiToken", str]:
        """A new token for user: (its row, the token itself, to be shown once and never again)."""
        key = secrets.token_hex(ID_BYTES)
        token = f"{PREFIX}{key}_{secrets.token_urlsafe(SECRET_BYTES)}"
        row = self.create(
            user=user,
            name=name,
            key=key,
            digest=digest(token),
            read_only=read_only,
            created_at=now,
            expires_at=now + timedelta(days=expires_days) if expires_days else None,
        )
        return row, token

    def matching(self, token: str) -> "ApiToken | None":
        """The row of token, whatever its state; None for a token no row was issued for."""
        found = TOKEN_PATTERN.fullmatch(token)
        if found is None:
            return None
        row = self.select_related("user").filter(key=found.group(1)).first()
        if row is None or not constant_time_compare(row.digest, digest(token)):
            return None
        return row


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="What the token is for, e.g. the script that uses it.")
    key = models.CharField("id", max_length=12, unique=True, editable=False, help_text="The token's public part.")
    digest = models.CharField(max_length=64, editable=False, help_text="SHA-256 of the token, in hex.")
    read_only = models.BooleanField(default=False, help_text="It may read, never act, whatever its user may do.")
    created_at = models.DateTimeField(editable=False)
    expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        verbose_name = "API token"
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=models.F("created_at")),
                name="api_token_expires_after_creation",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({PREFIX}{self.key}_…)"

    def refusal(self, now: datetime) -> str | None:
        """Why the token may not be used at now; None when it may."""
        if self.revoked_at is not None:
            return "This API token was revoked."
        if self.expires_at is not None and self.expires_at <= now:
            return "This API token has expired."
        if not self.user.is_active:
            return "This API token's user is inactive."
        return None

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def revoke(self, now: datetime) -> bool:
        """Revoke it from now on; False when it was revoked already (its first revocation's time stays)."""
        revoked = ApiToken.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=now)
        if revoked:
            self.revoked_at = now
        return bool(revoked)

    def used(self, now: datetime) -> None:
        """Record a use at now, unless one was recorded less than LAST_USED_EVERY_SECONDS before."""
        every = timedelta(seconds=LAST_USED_EVERY_SECONDS)
        if self.last_used_at is not None and now - self.last_used_at < every:
            return
        stale = models.Q(last_used_at__isnull=True) | models.Q(last_used_at__lt=now - every)
        ApiToken.objects.filter(stale, pk=self.pk).update(last_used_at=now)
        self.last_used_at = now
