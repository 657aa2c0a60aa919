"""The scheduler: plan occurrences of definitions, claim them, run them, record each attempt once.

loop (the runscheduler process), planning, leases, pool, runner and groups, the occurrence store
(every state change of an occurrence), policy, schedules, definitions and the job registry.
"""
