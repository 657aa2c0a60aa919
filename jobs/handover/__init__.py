"""Running occurrences in Celery workers (SCHEDULER_EXECUTOR=celery), and stock celery beat's messages.

executor: the scheduler's side, which hands claims over; worker: the worker's side, which takes
them over and runs them; beat: the tasks that celery beat's own messages reach.
"""
