FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN DEBUG=1 python manage.py collectstatic --noinput

# One image, three processes: override the command for the scheduler and the relay:
#   python manage.py runscheduler      python manage.py relay_outbox
EXPOSE 8000
CMD ["gunicorn", "bookworm_scheduler.wsgi", "--bind", "0.0.0.0:8000", "--workers", "2", "--access-logfile", "-"]
