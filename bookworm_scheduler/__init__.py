from bookworm_scheduler.celery import app as celery_app

__all__ = ("celery_app", "__version__")

__version__ = "1.0.0"
