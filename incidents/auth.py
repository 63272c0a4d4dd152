"""Who may do what: the roles, the actor, and the one permission matrix every action checks.

The action functions call `authorize` themselves before touching anything; a page that hides
a button is a convenience, never the check.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

logger = logging.getLogger(__name__)


class Role(StrEnum):
    VIEWER = "viewer"
    CLINICAL_LEAD = "clinical_lead"
    ONCALL = "oncall"
    INCIDENT_RESPONDER = "incident_responder"
    ADMIN = "admin"


class Action(StrEnum):
    DISABLE_SCORE = "disable_score"
    ENABLE_SCORE = "enable_score"
    ACKNOWLEDGE_ALERT = "acknowledge_alert"
    ESCALATE_ALERT = "escalate_alert"
    RESOLVE_ALERT = "resolve_alert"
    PAGE_NOW = "page_now"
    OPEN_INCIDENT = "open_incident"
    RETRY_PAGE = "retry_page"
    # Used by later capabilities (canary, thresholds, governance report).
    PROMOTE_VERSION = "promote_version"
    ROLLBACK = "rollback"
    EDIT_THRESHOLDS = "edit_thresholds"
    EXPORT_REPORT = "export_report"


_RESPONDERS = frozenset({Role.INCIDENT_RESPONDER, Role.ADMIN})
_ON_CALL = frozenset({Role.ONCALL, Role.INCIDENT_RESPONDER, Role.ADMIN})
_CLINICAL_AND_ON_CALL = _ON_CALL | {Role.CLINICAL_LEAD}

# The permission matrix: the roles allowed to perform each action. Nothing else grants rights.
PERMISSIONS: dict[Action, frozenset[Role]] = {
    # Switching a score off or on changes what clinicians see: responders only.
    Action.DISABLE_SCORE: _RESPONDERS,
    Action.ENABLE_SCORE: _RESPONDERS,
    Action.ROLLBACK: _RESPONDERS,
    # Working an alert: whoever carries the pager, and the clinical lead for their model.
    Action.ACKNOWLEDGE_ALERT: _CLINICAL_AND_ON_CALL,
    Action.ESCALATE_ALERT: _CLINICAL_AND_ON_CALL,
    Action.PAGE_NOW: _CLINICAL_AND_ON_CALL,
    Action.OPEN_INCIDENT: _CLINICAL_AND_ON_CALL,
    Action.RESOLVE_ALERT: _ON_CALL,
    Action.RETRY_PAGE: _ON_CALL,
    # Clinical decisions about a model's release and thresholds.
    Action.PROMOTE_VERSION: frozenset({Role.CLINICAL_LEAD, Role.ADMIN}),
    Action.EDIT_THRESHOLDS: frozenset({Role.CLINICAL_LEAD, Role.ADMIN}),
    Action.EXPORT_REPORT: frozenset(Role),
}


@dataclass(frozen=True)
class Actor:
    """A person acting in Vigil: a name for the audit log and one role."""

    name: str
    role: Role

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("an actor needs a name")
        object.__setattr__(self, "role", Role(self.role))

    def __str__(self) -> str:
        return f"{self.name} ({self.role.value})"


class PermissionDenied(PermissionError):
    """The actor's role may not perform the action; nothing was changed."""

    def __init__(self, actor: Actor, action: Action) -> None:
        allowed = ", ".join(sorted(r.value for r in PERMISSIONS[action]))
        super().__init__(
            f"{actor.name} acts as {actor.role.value}, which may not {action.value} "
            f"(allowed: {allowed})"
        )
        self.actor = actor
        self.action = action


def can(actor: Actor | None, action: Action) -> bool:
    return actor is not None and actor.role in PERMISSIONS[Action(action)]


def authorize(actor: Actor, action: Action) -> None:
    """Raise PermissionDenied unless the actor's role may perform `action`."""
    if not can(actor, action):
        logger.warning("refused %s to %s", action.value, actor)
        raise PermissionDenied(actor, Action(action))
