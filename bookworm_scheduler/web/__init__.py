"""The web app's kit, shared by the jobs and outbox admins: sign-in, read-only pages, paging."""
