"""Encrypted cookies of the browser login: the OAuth state and the session.

Both cookies are Fernet tokens (AES-CBC + HMAC-SHA256, with a timestamp checked against a
maximum age), keyed by :meth:`HubServiceSettings.cookie_key`: the browser can neither read
nor forge them. They are ``HttpOnly``, ``SameSite=Lax``, scoped to the service prefix, and
``Secure`` when the request came over HTTPS.

* The **state** cookie lives for the few minutes of one login: it holds the random ``state``
  sent to the hub (checked on return, against login CSRF), the PKCE ``code_verifier`` and the
  URL to return to.
* The **session** cookie holds the OAuth token the hub issued to this service for the user.
  Each request resolves it like any other token, so revoking it at the hub ends the session.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from starlette.requests import Request
from starlette.responses import Response

from ._settings import HubServiceSettings


class SessionCookies:
    """Reads and writes this service's encrypted cookies."""

    def __init__(self, settings: HubServiceSettings) -> None:
        self._fernet = Fernet(base64.urlsafe_b64encode(settings.cookie_key()))
        self.path = settings.base_url
        self.session_name = f"{settings.service_name}-session"
        self.state_name = f"{settings.service_name}-oauth-state"
        self.session_max_age = settings.session_max_age
        self.state_max_age = settings.oauth_state_max_age

    def _seal(self, payload: dict[str, str]) -> str:
        return self._fernet.encrypt(json.dumps(payload).encode()).decode()

    def _open(self, sealed: str | None, max_age: int) -> dict[str, Any] | None:
        if not sealed:
            return None
        try:
            payload = json.loads(self._fernet.decrypt(sealed.encode(), ttl=max_age))
        except (InvalidToken, ValueError):
            return None
        return payload if isinstance(payload, dict) else None

    def _set(self, response: Response, request: Request, name: str, value: str, age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=age,
            path=self.path,
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="lax",
        )

    def read_session(self, request: Request) -> str | None:
        """The user's OAuth token from a valid session cookie, else ``None``."""
        payload = self._open(request.cookies.get(self.session_name), self.session_max_age)
        token = payload.get("token") if payload else None
        return token if isinstance(token, str) else None

    def set_session(self, response: Response, request: Request, token: str) -> None:
        value = self._seal({"token": token})
        self._set(response, request, self.session_name, value, self.session_max_age)

    def read_state(self, request: Request) -> dict[str, str] | None:
        """The pending login (``state``, ``verifier``, ``next``), else ``None``."""
        payload = self._open(request.cookies.get(self.state_name), self.state_max_age)
        if payload is None or not all(
            isinstance(payload.get(k), str) for k in ("state", "verifier", "next")
        ):
            return None
        return {k: payload[k] for k in ("state", "verifier", "next")}

    def set_state(self, response: Response, request: Request, state: dict[str, str]) -> None:
        self._set(response, request, self.state_name, self._seal(state), self.state_max_age)

    def clear(self, response: Response, name: str) -> None:
        response.delete_cookie(name, path=self.path, httponly=True, samesite="lax")
