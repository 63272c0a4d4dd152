"""Vigil: monitoring and SLA observability for clinical prediction models."""

__version__ = "0.1.0"
