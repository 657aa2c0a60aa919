#!/usr/bin/env python
"""Django's command-line utility for BookWorm Scheduler."""

import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bookworm_scheduler.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line
    from django.db import Error

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        sys.stderr.write(f"configuration error: {exc}\n")
        sys.exit(2)
    except Error as exc:
        # A command that cannot connect (migrate, say) ends with one line naming DATABASE_URL and why, not a traceback.
        from bookworm_scheduler.kernel.db import describe_database_error

        described = describe_database_error(exc)
        if not described.startswith("DATABASE_URL: "):
            raise
        sys.stderr.write(f"cannot connect to the database: {described}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
