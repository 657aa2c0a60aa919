"""The console at /tickerq: the admin's pages, the dashboard, and the JSON API."""
