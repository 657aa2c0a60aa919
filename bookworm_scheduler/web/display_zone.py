"""The zone the console shows times in, per viewer: UTC unless the viewer picked another, remembered in a cookie.

DisplayZoneMiddleware activates the cookie's zone for the request (django.utils.timezone.activate), so
list_time, the DATETIME_FORMAT of the detail pages and every template's dates follow it; the header's
"Times in" form (templates/admin/base_site.html) posts to choose(), which sets the cookie. Times are
stored in UTC whatever the viewer picks: only their display changes.
"""

import zoneinfo
from dataclasses import dataclass
from datetime import timedelta
from functools import cache

from django.contrib import messages
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from bookworm_scheduler.web.redirects import back

COOKIE = "display_zone"
COOKIE_AGE = timedelta(days=365)
DEFAULT = "UTC"

# Offered first in the chooser, after UTC; any other zone of the tz database follows them.
COMMON = (
    "Europe/London",
    "Europe/Lisbon",
    "Europe/Paris",
    "Europe/Berlin",
    "Europe/Madrid",
    "Europe/Rome",
    "Europe/Amsterdam",
    "Europe/Warsaw",
    "Europe/Helsinki",
    "Europe/Istanbul",
    "Europe/Moscow",
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "America/Toronto",
    "America/Mexico_City",
    "America/Sao_Paulo",
    "Africa/Lagos",
    "Africa/Johannesburg",
    "Asia/Dubai",
    "Asia/Kolkata",
    "Asia/Singapore",
    "Asia/Shanghai",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Pacific/Auckland",
)


@cache
def known_zones() -> frozenset[str]:
    """The zones a viewer may pick: the tz database's (zoneinfo reads its files once), without the host's own
    "localtime" (whatever the server is set to) and "Factory" (no zone at all)."""
    return frozenset(zoneinfo.available_timezones() - {"localtime", "Factory"}) | {DEFAULT}


@cache
def _listed() -> tuple[tuple[str, tuple[str, ...]], ...]:
    others = sorted(name for name in known_zones() if "/" in name and not name.startswith("Etc/"))
    common = tuple(name for name in COMMON if name in known_zones())
    return (
        ("", (DEFAULT,)),
        ("Common", common),
        ("All zones", tuple(name for name in others if name not in common)),
    )


@dataclass(frozen=True)
class DisplayZone:
    """A viewer's zone (request.display_zone) and the chooser's options, in groups (label, names)."""

    name: str

    @property
    def choices(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        listed = _listed()
        if any(self.name in names for _, names in listed):
            return listed
        return (("", (DEFAULT, self.name)), *listed[1:])  # a zone picked by its older name, e.g. "Japan"


def zone_of(request) -> str:
    """The viewer's zone: the cookie's, if it names a known zone (anything else is ignored), else UTC."""
    name = request.COOKIES.get(COOKIE, "")
    return name if name in known_zones() else DEFAULT


class DisplayZoneMiddleware:
    """Shows the request's times in the viewer's zone; after AuthenticationMiddleware, before any view."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.display_zone = DisplayZone(zone_of(request))
        timezone.activate(zoneinfo.ZoneInfo(request.display_zone.name))
        try:
            return self.get_response(request)
        finally:
            timezone.deactivate()  # the thread's next request starts from UTC, whatever this one picked


@require_POST
def choose(request):
    """POST zone=<name>[&next=<this site's URL>]: remember the zone for a year and go back (CSRF-checked)."""
    response = HttpResponseRedirect(back(request, reverse("admin:index")))
    name = request.POST.get("zone", "").strip()
    if name not in known_zones():
        messages.error(request, f"Unknown time zone “{name}”: times stay in {zone_of(request)}.")
        return response
    response.set_cookie(
        COOKIE,
        name,
        max_age=COOKIE_AGE,
        secure=request.is_secure(),
        httponly=True,
        samesite="Lax",
    )
    return response
