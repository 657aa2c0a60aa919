"""Where a console form goes back to once it is done: the page it came from, if that page is this site's."""

from django.utils.http import url_has_allowed_host_and_scheme


def back(request, fallback: str) -> str:
    """Where the form was (its `next`, else the referring page) if it is this site's; else fallback."""
    for target in (request.POST.get("next"), request.META.get("HTTP_REFERER")):
        if target and url_has_allowed_host_and_scheme(
            target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            return target
    return fallback
