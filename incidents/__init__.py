"""Incident response: alerts, kill switch, audit, paging, runbooks."""
