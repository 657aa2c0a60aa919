"""Dates as a scheduler's operator reads them: ISO order, to the second, with the zone they are shown in
(FORMAT_MODULE_PATH). "T" is the active zone's abbreviation (bookworm_scheduler.web.display_zone; UTC by default)."""

DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s T"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
