# Quick start: `make run` (SQLite, everything in one terminal) and `make test` (PostgreSQL + RabbitMQ).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/bookworm_scheduler
TEST_RABBITMQ_URL ?= amqp://guest:guest@127.0.0.1:5672/%2F
# The soak's short run, part of `make test` (TEST_SOAK_SECONDS=0 leaves it out while developing).
TEST_SOAK_SECONDS ?= 120

.PHONY: run test test-unit screenshots services system-packages migrate bench-scheduler bench-oneoff bench-inputs bench-relay bench-dashboard bench-beat soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

migrate: $(VENV)/.installed
	DEBUG=1 $(BIN)/python manage.py migrate --noinput

run: migrate
	@echo
	@echo "  Dashboard: http://127.0.0.1:8000/tickerq/"
	@DEBUG=1 $(BIN)/python manage.py firstadmin
	@echo "  Embedded SQLite: one scheduler at a time, the relay polls (no LISTEN/NOTIFY)."
	@echo
	PATH="$(abspath $(BIN)):$$PATH" DEBUG=1 $(BIN)/honcho --procfile Procfile.dev start

# Start PostgreSQL and RabbitMQ when they are installed but stopped.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || { \
		pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | head -1) main start && \
		for i in $$(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done; }
	@pg_isready -h 127.0.0.1 -p 5432
	@rabbitmqctl -q status >/dev/null 2>&1 || { \
		rabbitmq-server -detached; \
		for i in $$(seq 120); do rabbitmqctl -q status >/dev/null 2>&1 && break; sleep 1; done; }
	@rabbitmqctl -q await_startup --timeout 120 && echo "rabbitmq: running"

# Debian packages the tests use: libfaketime (schedulers with a skewed clock), Chromium (the browser test),
# mmdebstrap, podman and buildah (the image, built and run without a Docker engine: deploy/build-image.sh),
# openssl and stunnel4 (the TLS tests' certificates, and TLS in front of RabbitMQ: tests/bookworm_scheduler/tls_servers.py).
SYSTEM_PACKAGES := faketime chromium mmdebstrap podman buildah openssl stunnel4
system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# promtool tests deploy/prometheus/alerts.yml, and a real Prometheus scrapes the service in
# tests/bookworm_scheduler/test_prometheus.py: both taken from Debian's prometheus package without
# installing the package (that would start a Prometheus server as a system service).
PROMETHEUS_BINARIES := $(BIN)/prometheus $(BIN)/promtool
$(PROMETHEUS_BINARIES) &: | $(BIN)/python
	rm -rf $(VENV)/prometheus-deb && mkdir -p $(VENV)/prometheus-deb
	cd $(VENV)/prometheus-deb && { apt-get download prometheus 2>/dev/null || { apt-get update -qq && apt-get download prometheus; }; }
	dpkg -x $(VENV)/prometheus-deb/prometheus_*.deb $(VENV)/prometheus-deb/root
	cp $(VENV)/prometheus-deb/root/usr/bin/prometheus $(VENV)/prometheus-deb/root/usr/bin/promtool $(BIN)/
	rm -rf $(VENV)/prometheus-deb

test: $(VENV)/.installed services system-packages $(PROMETHEUS_BINARIES)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
# Models against migration files; the database only checks its history, so an in-memory one will do.
	DATABASE_URL=sqlite://:memory: DEBUG=1 $(BIN)/python manage.py makemigrations --check --dry-run
	DATABASE_URL=$(TEST_DATABASE_URL) RABBITMQ_URL=$(TEST_RABBITMQ_URL) DEBUG=1 \
		$(BIN)/python -m pytest $(PYTEST_ARGS)
ifneq ($(TEST_SOAK_SECONDS),0)
	$(MAKE) --no-print-directory soak SOAK_SECONDS=$(TEST_SOAK_SECONDS) SOAK_CELERY_SECONDS=60 SOAK_SEED=1 \
		SOAK_REPORTS=$(VENV)
endif

# The unit tier: no database or broker (tests marked unit), in seconds.
test-unit: $(VENV)/.installed
	DATABASE_URL=$(TEST_DATABASE_URL) DEBUG=1 $(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

# The README's screenshots (docs/screenshots/), taken by the browser test; `make test` writes none.
screenshots: $(VENV)/.installed services system-packages
	DATABASE_URL=$(TEST_DATABASE_URL) RABBITMQ_URL=$(TEST_RABBITMQ_URL) DEBUG=1 README_SCREENSHOTS=1 \
		$(BIN)/python -m pytest tests/jobs/test_dashboard_browser.py

# Procrastinate, the PostgreSQL peer that bench-scheduler measures beside runscheduler, in a virtualenv of its own.
PEER_VENV := .venv-procrastinate
$(PEER_VENV)/.installed: bench/requirements-procrastinate.txt
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install --quiet -r bench/requirements-procrastinate.txt
	touch $@

bench-scheduler: $(VENV)/.installed $(PEER_VENV)/.installed services
	DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/python bench/scheduler_throughput.py $(BENCH_SCHEDULER_ARGS)

# One-off runs (issue 25) in their own database: the lone run's fire lag beside the lone cron job's, an idle
# scheduler's CPU with 0 and 100,000 runs waiting (and the plans of its reads), schedule_many of 10,000, and
# 10,000 due at one instant beside 1,000 cron definitions and Procrastinate's defer(schedule_at=...): about 6 minutes.
bench-oneoff: $(VENV)/.installed $(PEER_VENV)/.installed services
	DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/python bench/oneoff_runs.py $(BENCH_ONEOFF_ARGS)

# Crafted cron expressions, zones, payloads and API bodies: how long each takes to be refused (no database).
bench-inputs: $(VENV)/.installed
	DEBUG=1 DATABASE_URL=sqlite://:memory: $(BIN)/python bench/hostile_inputs.py $(BENCH_INPUTS_ARGS)

bench-relay: $(VENV)/.installed services
	DATABASE_URL=$(TEST_DATABASE_URL) RABBITMQ_URL=$(TEST_RABBITMQ_URL) $(BIN)/python bench/relay_throughput.py

# Seeds 1M occurrences and 1M outbox rows in its own database, times every dashboard page through gunicorn.
bench-dashboard: $(VENV)/.installed services
	DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/python bench/dashboard_pages.py

# runscheduler beside celery beat (DatabaseScheduler) on the same definitions, in its own database and
# RabbitMQ vhost: about 75 minutes with the defaults (1,000 and 10,000 definitions; beat, then runscheduler
# x1, x2, x4 with the inline and the Celery executor). BENCH_BEAT_ARGS="--definitions 1000 --minutes 1 --burst 0".
bench-beat: $(VENV)/.installed services
	DATABASE_URL=$(TEST_DATABASE_URL) PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/celery_beat.py $(BENCH_BEAT_ARGS)

# The real service under faults (bench/soak.py): 3 schedulers (one a minute fast), 2 relays and a consumer in
# a database and a RabbitMQ vhost of its own; SIGKILLs, pauses, a RabbitMQ stop, a PostgreSQL restart, admin
# edits; then it checks that nothing was lost, duplicated or stuck. Two phases: the inline executor for
# SOAK_SECONDS, then Celery workers (the celery executor, a quarter of the definitions) for SOAK_CELERY_SECONDS
# (0: no second phase). SOAK_ARGS goes to both. `make test` runs 120 s + 60 s (about 4 minutes).
SOAK_SECONDS ?= 600
SOAK_CELERY_SECONDS ?= 120
SOAK_SEED ?= 1
SOAK_REPORTS ?= docs
SOAK_ENV := DATABASE_URL=$(TEST_DATABASE_URL) RABBITMQ_URL=$(TEST_RABBITMQ_URL)
soak: $(VENV)/.installed services system-packages
	$(SOAK_ENV) $(BIN)/python bench/soak.py --seconds $(SOAK_SECONDS) --seed $(SOAK_SEED) \
		--report $(SOAK_REPORTS)/soak-report.json $(SOAK_ARGS)
ifneq ($(SOAK_CELERY_SECONDS),0)
	$(SOAK_ENV) $(BIN)/python bench/soak.py --seconds $(SOAK_CELERY_SECONDS) --seed $(SOAK_SEED) \
		--executor celery --scale 0.25 --report $(SOAK_REPORTS)/soak-report-celery.json $(SOAK_ARGS)
endif

clean:
	rm -rf $(VENV) db.sqlite3 db.sqlite3-wal db.sqlite3-shm
