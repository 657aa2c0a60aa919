"""The schema: job policies, definitions' follow-ups, planning cursors, occurrences, attempts, alerts and scheduler
instances.

Job definitions themselves are django-celery-beat's PeriodicTask rows (with a crontab,
interval or clocked schedule); JobPolicy and PlanningCursor add what a scheduler needs and
owns beyond them (definitions.py). An occurrence's state changes are the occurrence store's
(jobs.engine.store); the SQL that the hot paths send is in jobs.engine.sql. The status words of the
constraints and indexes are the enums' (OccurrenceStatus, AttemptStatus, ...), as the migrations
spell them. Every model is importable from here, as before this module became a package.
"""

from jobs.engine.policy import MisfirePolicy, Policy, Priority
from jobs.models.alerts import ALERT_PENDING, Alert, AlertDelivery, AlertKind, AlertQuerySet
from jobs.models.definitions import DefinitionFollowUp, DefinitionsVersion, FollowUpWhen, JobPolicy, PlanningCursor
from jobs.models.instances import SchedulerInstance
from jobs.models.occurrences import (
    OCCURRENCE_FINISHED,
    OCCURRENCE_LIVE,
    Attempt,
    AttemptStatus,
    Occurrence,
    OccurrenceQuerySet,
    OccurrenceStatus,
)
from jobs.models.tokens import ApiToken

__all__ = [
    "ALERT_PENDING",
    "OCCURRENCE_FINISHED",
    "OCCURRENCE_LIVE",
    "Alert",
    "AlertDelivery",
    "AlertKind",
    "AlertQuerySet",
    "ApiToken",
    "Attempt",
    "AttemptStatus",
    "DefinitionFollowUp",
    "DefinitionsVersion",
    "FollowUpWhen",
    "JobPolicy",
    "MisfirePolicy",
    "Occurrence",
    "OccurrenceQuerySet",
    "OccurrenceStatus",
    "PlanningCursor",
    "Policy",
    "Priority",
    "SchedulerInstance",
]
