"""Runs: durable, webhook-triggered pipelines, advanced by whoever holds their lease.

    pipeline.py        a pipeline's steps (llm, tool, python), its DAG, checked before a run exists
    pipelines_file.py  named pipelines (pipelines.json), started by name
    submit.py          starting a run: checked, pinned, stored once per delivery id
    executor.py        advancing a run: leases, fenced checkpoints, retries, cancel, deadline
    worker.py          who advances: `orchesity worker` and the cron sweep
    views.py           what readers are shown; cancelling
    webhooks.py        Standard Webhooks signatures, checked and made
    callbacks.py       a finished run's signed callback, retried with backoff

The events a run emits, and their readers, are core/progress.py; the HTTP function is
functions/runs.py.
"""
