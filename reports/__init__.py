"""Governance reports."""
