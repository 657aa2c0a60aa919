"""What a job's page edits beside the definition itself: its run policy and its follow-ups.

A follow-up reads as the page says it: "when this job succeeds / fails for good / is cancelled / ends, run
<a registered job> with <a payload>". DefinitionFollowUp.clean checks the job and the payload as
jobs.schedule checks a one-off run's (jobs.engine.oneoff.FollowUp), so a wrong one is a form error.
"""

from django import forms
from django.contrib import admin

from jobs.models import DefinitionFollowUp, JobPolicy
from jobs.web.forms import job_choices


class JobPolicyInline(admin.StackedInline):
    model = JobPolicy
    can_delete = False
    verbose_name = "run policy"
    template = "admin/jobs/jobpolicy/stacked.html"  # titled by the job's name, not JobPolicy's "policy of 2"
    fields = ["priority", "misfire_policy", "max_retries", "retry_intervals", "timeout_seconds"]


class FollowUpForm(forms.ModelForm):
    """`job` among the registered jobs (a stored name no longer registered is kept, marked as such)."""

    class Meta:
        model = DefinitionFollowUp
        fields = ["when", "job", "payload"]
        widgets = {"payload": forms.Textarea(attrs={"rows": 2, "cols": 40, "placeholder": '{"key": "value"}'})}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        choices = job_choices(self.instance.job if self.instance.pk else "")
        self.fields["job"] = forms.ChoiceField(label="run", choices=choices, help_text="A registered job.")


class FollowUpInline(admin.TabularInline):
    model = DefinitionFollowUp
    form = FollowUpForm
    extra = 0
    verbose_name_plural = "follow-ups: when this job …, run …"
