"""Who may do what with models and deployments.

Two kinds of rights, deliberately simple:

* **Managing** (upload, tag, delete a model; create, change, delete a deployment; read its
  logs) belongs to the *owner* — the hub user whose name is the first part of
  ``owner/name`` — and to hub admins. Resources a caller may not manage are invisible to it in
  the registry and deployment APIs (404, as if they did not exist), so names do not leak.
* **Calling** a deployment through the gateway is for its owner, hub admins, and whoever its
  :class:`Grants` name: hub users by name, members of hub groups, or every hub user
  (``public``). Granted callers may also read the deployment's status (to find its URL and
  APIs), but not change it. To anybody else a deployment is invisible on the gateway too
  (404, the API's answer), so its existence does not leak there either.

Anonymous callers never get anywhere: every route but health requires a hub identity (see
:mod:`hub_service.auth`), so ``public`` means "every hub user", not "the internet".
"""

from __future__ import annotations

from fastapi import HTTPException
from pydantic import BaseModel, Field, field_validator

from model_runtime.naming import check_owner

from .auth import HubUser


class Grants(BaseModel):
    """Who, besides the owner and admins, may call a deployment."""

    model_config = {"extra": "forbid"}

    users: list[str] = Field(default_factory=list, description="Hub user names.")
    groups: list[str] = Field(default_factory=list, description="Hub group names.")
    public: bool = Field(False, description="Every hub user may call it.")

    @field_validator("users", "groups")
    @classmethod
    def _names(cls, values: list[str]) -> list[str]:
        cleaned = sorted({v.strip() for v in values})
        for value in cleaned:
            if not value or len(value) > 255 or any(c in value for c in "/\\\n\r\t "):
                raise ValueError(f"{value!r} is not a hub user or group name")
        return cleaned


def can_manage(user: HubUser, owner: str) -> bool:
    return user.admin or user.name == owner


def can_call(user: HubUser, owner: str, grants: Grants) -> bool:
    return (
        can_manage(user, owner)
        or grants.public
        or user.name in grants.users
        or any(group in grants.groups for group in user.groups)
    )


def require_manage(user: HubUser, owner: str, what: str) -> None:
    """404 unless ``user`` may manage resources of ``owner`` (``what`` names the resource)."""
    if not can_manage(user, owner):
        raise HTTPException(404, f"{what} not found")


def owner_for(user: HubUser, owner: str | None) -> str:
    """The owner a new resource gets: the caller, or anyone the caller (an admin) names."""
    if owner is None or owner == user.name:
        return user.name
    if not user.admin:
        raise HTTPException(403, f"only hub admins may act for another user ({owner!r})")
    try:
        return check_owner(owner)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
