# One image, three processes: the dashboard (gunicorn, the default command), and by their own
# command `python manage.py runscheduler` and `python manage.py relay_outbox` (see compose.yaml).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

RUN groupadd --system --gid 10001 bookworm \
 && useradd --system --uid 10001 --gid bookworm --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin bookworm

COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

# The code, and nothing else of the work tree (no virtualenv, database file or local secrets).
COPY manage.py ./
COPY bookworm_scheduler ./bookworm_scheduler
COPY jobs ./jobs
COPY outbox ./outbox
COPY templates ./templates
COPY deploy/gunicorn.conf.py ./deploy/

# Hashed, compressed static files for whitenoise, made with the production settings; this key
# only lets the settings load for the build and is not in the image.
RUN DEBUG=0 SECRET_KEY=collectstatic-build-only python manage.py collectstatic --noinput

# Everything above belongs to root and stays read-only for the processes.
USER 10001:10001
EXPOSE 8000
# The web process answers; the scheduler's and the relay's containers turn this off (compose.yaml).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\") or 8000}/alive', timeout=4)"]
CMD ["gunicorn", "--config", "deploy/gunicorn.conf.py", "bookworm_scheduler.wsgi"]
