"""Baselines, quality SLOs and burn rates, alert rules and their lifecycle.

Reads the store's rollups (and raw rows only where a rule needs them: cohorts, tail
quantiles); writes its own small tables (`baselines`, `alert_state`, `alert_log`, `silences`).
"""
