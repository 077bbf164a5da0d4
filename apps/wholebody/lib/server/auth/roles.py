"""MONAI Label's four roles, ranked: a role grants every route that a lower role may call.

Keycloak sites give each user every role they hold explicitly; a users file names one or more,
and the highest decides (an admin is also a reviewer, an annotator and a user)."""

from __future__ import annotations

from typing import Iterable

from monailabel.config import settings

ADMIN = settings.MONAI_LABEL_AUTH_ROLE_ADMIN
REVIEWER = settings.MONAI_LABEL_AUTH_ROLE_REVIEWER
ANNOTATOR = settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR
USER = settings.MONAI_LABEL_AUTH_ROLE_USER

# Lowest first.
RANKED = (USER, ANNOTATOR, REVIEWER, ADMIN)
RANK = {role: rank for rank, role in enumerate(RANKED)}


class RoleError(ValueError):
    """A role name MONAI Label does not know."""


def check_roles(roles: Iterable[str]) -> list[str]:
    roles = list(roles)
    unknown = [r for r in roles if r not in RANK]
    if unknown or not roles:
        raise RoleError(f"unknown role(s) {unknown or roles}; roles: {', '.join(RANKED)}")
    return sorted(set(roles), key=RANK.__getitem__)


def granted(roles: Iterable[str]) -> list[str]:
    """Every role the given ones grant, lowest first (what MONAI Label's RBAC expects to see)."""
    top = max((RANK[r] for r in roles if r in RANK), default=-1)
    return list(RANKED[: top + 1])


def allows(roles: Iterable[str], required: str) -> bool:
    return required in granted(roles)
