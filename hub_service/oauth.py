"""Browser login through the hub: the OAuth 2 authorization-code flow with PKCE.

A browser without a session that asks for a page (``GET`` with ``Accept: text/html``) is
redirected to ``login``, which starts the flow (API clients get a 401 instead):

1. ``GET {prefix}login?next=<path>``: make a random ``state`` and a PKCE ``code_verifier``,
   keep both (and ``next``) in the encrypted state cookie, and redirect to the hub's
   ``/hub/api/oauth2/authorize`` with ``client_id``, ``redirect_uri``, ``state`` and
   ``code_challenge = BASE64URL(SHA256(code_verifier))`` (``S256``). PKCE is always sent:
   hubs that require it (``JupyterHub.oauth_require_pkce``) need it, others ignore it.
2. The hub logs the user in if needed, checks that they may access this service
   (``access:services!service=<name>``), and redirects to ``{prefix}oauth_callback`` with a
   one-time ``code`` and the ``state``.
3. ``GET {prefix}oauth_callback``: check ``state`` against the cookie, trade the code (with
   the verifier and this service's client secret, its API token) for the user's token at
   ``{hub_api}/oauth2/token``, resolve and authorize it, store it in the encrypted session
   cookie and redirect to ``next``.

``next`` is only ever a path under the service prefix, so the flow cannot be turned into an
open redirect.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import RedirectResponse, Response

from .auth import (
    HubAuthenticator,
    HubUnavailable,
    LoginRequired,
    OAuthExchangeFailed,
    TokenRejected,
    get_authenticator,
)


def pkce_pair() -> tuple[str, str]:
    """A PKCE ``(code_verifier, code_challenge)`` pair for the ``S256`` method (RFC 7636)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def safe_next(next_url: str | None, prefix: str) -> str:
    """``next_url`` if it is a local path under ``prefix``, else ``prefix`` itself."""
    if (
        next_url
        and next_url.startswith(prefix)
        and not next_url.startswith("//")
        and "\\" not in next_url
        and "/.." not in next_url
    ):
        return next_url
    return prefix


def login_redirect(authenticator: HubAuthenticator, request: Request, next_url: str) -> Response:
    """Start the login: the redirect to the hub's authorize URL, with the state cookie."""
    settings = authenticator.settings
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(32)
    query = urlencode(
        {
            "client_id": settings.client_id,
            "redirect_uri": settings.redirect_uri,
            "response_type": "code",
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    response = RedirectResponse(f"{settings.authorize_url}?{query}", status_code=302)
    authenticator.cookies.set_state(
        response,
        request,
        {"state": state, "verifier": verifier, "next": safe_next(next_url, settings.base_url)},
    )
    return response


async def login_required_handler(request: Request, exc: Exception) -> Response:
    """Exception handler: turn :class:`LoginRequired` into the start of the login flow."""
    assert isinstance(exc, LoginRequired)
    authenticator = get_authenticator(request)
    response = login_redirect(authenticator, request, exc.next_url)
    authenticator.cookies.clear(response, authenticator.cookies.session_name)
    return response


def oauth_router() -> APIRouter:
    """The ``login`` and ``oauth_callback`` routes (mounted under the service prefix)."""
    router = APIRouter(tags=["auth"])

    @router.get("/login", include_in_schema=False)
    async def login(
        request: Request, next_url: Annotated[str | None, Query(alias="next")] = None
    ) -> Response:
        return login_redirect(get_authenticator(request), request, next_url or "")

    @router.get("/oauth_callback", include_in_schema=False)
    async def oauth_callback(
        request: Request,
        code: str | None = None,
        state: str | None = None,
        error: str | None = None,
    ) -> Response:
        authenticator = get_authenticator(request)
        if error is not None:
            raise HTTPException(403, "the hub refused the login")
        pending = authenticator.cookies.read_state(request)
        if not code or not state or pending is None:
            raise HTTPException(400, "no login in progress: start again")
        if not hmac.compare_digest(state.encode(), pending["state"].encode()):
            raise HTTPException(400, "OAuth state mismatch: start the login again")
        try:
            token = await authenticator.exchange_code(code, pending["verifier"])
            user = await authenticator.resolve(token)
        except OAuthExchangeFailed:
            raise HTTPException(403, "the hub refused the OAuth code") from None
        except TokenRejected:
            raise HTTPException(403, "the hub rejected the issued token") from None
        except HubUnavailable:
            raise HTTPException(503, "the hub is not reachable, try again") from None
        if not authenticator.authorize(user):
            raise HTTPException(403, f"login lacks the scope {authenticator.required_scope}")
        response = RedirectResponse(
            safe_next(pending["next"], authenticator.settings.base_url), status_code=302
        )
        authenticator.cookies.set_session(response, request, token)
        authenticator.cookies.clear(response, authenticator.cookies.state_name)
        return response

    return router
