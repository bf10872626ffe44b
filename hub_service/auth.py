r"""Hub identities for every request: tokens and cookies in, a :class:`HubUser` out.

Concepts:

* **Credentials.** API clients send their JupyterHub token in ``Authorization: token <t>``
  (or ``Bearer <t>``); browsers hold an encrypted session cookie with the OAuth token the hub
  issued to this service for them (see :mod:`hub_service.oauth` for the login flow). Tokens
  are never accepted in URLs.
* **Resolution.** :class:`HubAuthenticator` asks the hub who owns a token:
  ``GET {hub_api}/user`` with that token returns the owner's model (name, admin, groups) and
  the token's *expanded* scopes. This service needs none of its own hub permissions for it.
  Results are cached by the SHA-256 of the token (never the token itself): accepted tokens for
  a short TTL (~60 s, so a revoked token stops working within a minute), rejected ones only
  for a few seconds (so a user who just created a token is not locked out). Both caches are
  bounded. An unreachable hub is a 503, and is never cached.
* **Hub outages.** The hub restarts (upgrades, a rescheduled pod) while this service keeps
  running behind the proxy. So that callers do not notice, a token the hub accepted within
  the last ``hub_outage_grace`` seconds (default 300; 0 disables) keeps working while the hub
  cannot be asked — logged once per outage. The grace counts from the hub's last answer, so
  it is never extended without the hub, and never applies to a token the hub refused. Once
  the hub answers again every token is revalidated at the end of its TTL as usual: a token
  revoked during the outage is refused within ``positive_ttl`` of the hub's return. Tokens
  never seen before get the 503. During an outage the hub is asked at most once a second (a
  hub that hangs until ``hub_timeout`` would otherwise hold up every call).
* **Authorization.** A token may use this service only if its scopes grant
  ``access:services!service=<name>``: held as is, or as the unfiltered ``access:services``
  (see :func:`has_scope`). Being a hub admin grants nothing by itself; admins pass because
  the hub gives their tokens ``access:services`` — and a restricted admin token does not.
* **Errors.** 401 (with ``WWW-Authenticate``) when there are no usable credentials: none,
  or a malformed, unknown, expired or revoked token; 403 only for a valid token that lacks
  the scope; 503 when the hub cannot be asked. Error bodies are fixed strings: they never
  contain the token.

:func:`require_user` is the FastAPI dependency that ties these together. FastAPI reads and
validates a request's body before it runs dependencies, so routes that take a body are
:class:`AuthenticatedRoute`\ s: they authenticate first, and a caller without valid
credentials gets 401/403, never a 400/422 about a body it had no right to send.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Generic, TypeVar

import httpx
from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, ValidationError

from ._cookies import SessionCookies
from ._settings import HubServiceSettings, StaticTokens

log = logging.getLogger(__name__)

V = TypeVar("V")

_TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/=-]{8,512}")
#: Seconds between attempts to reach the hub while it is out (others use the grace at once).
OUTAGE_RECHECK = 1.0


class HubUser(BaseModel):
    """A hub user as this service sees it."""

    name: str
    admin: bool = False
    groups: list[str] = Field(default_factory=list)
    scopes: list[str] = Field(default_factory=list, description="The token's expanded scopes.")


# -- scopes ---------------------------------------------------------------------------------

ALL = None
"""Marker in a parsed scope table: the scope is held without a filter, i.e. for everything."""

ParsedScopes = dict[str, dict[str, set[str]] | None]


def access_scope(service_name: str) -> str:
    """The scope a token needs to use the service ``service_name``."""
    return f"access:services!service={service_name}"


def parse_scopes(scopes: Iterable[str]) -> ParsedScopes:
    """Group scopes by base: ``{"access:services": {"service": {"a", "b"}}, "self": ALL}``.

    An unfiltered scope (``access:services``) covers every filtered form of the same base, so
    it replaces them as :data:`ALL`.
    """
    parsed: ParsedScopes = {}
    for scope in scopes:
        base, _, filter_ = scope.partition("!")
        if not filter_:
            parsed[base] = ALL
            continue
        key, _, value = filter_.partition("=")
        if not value:
            continue  # an unexpanded filter (``!user``) grants nothing by itself
        if base not in parsed:
            parsed[base] = {}
        filters = parsed[base]
        if filters is not ALL:
            filters.setdefault(key, set()).add(value)
    return parsed


def has_scope(required: str, held: Iterable[str]) -> bool:
    """Whether the expanded scopes ``held`` grant ``required`` (filter expansion included).

    ``required`` is ``base`` or ``base!key=value``. An unfiltered held ``base`` grants both;
    a held ``base!key=value`` grants only the same filter. Group filters are not resolved to
    their members (the hub's own ``check_scopes`` does not either); this service only checks
    ``access:services`` scopes, which have no group form.
    """
    parsed = parse_scopes(held)
    base, _, filter_ = required.partition("!")
    if base not in parsed:
        return False
    filters = parsed[base]
    if filters is ALL:
        return True
    key, _, value = filter_.partition("=")
    return bool(filter_) and value in filters.get(key, set())


# -- caches ---------------------------------------------------------------------------------


class TTLCache(Generic[V]):
    """A small LRU cache whose entries expire ``ttl`` seconds after they were set."""

    def __init__(
        self, maxsize: int, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.maxsize = maxsize
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()

    def get(self, key: str) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def set(self, key: str, value: V) -> None:
        if self.ttl <= 0:
            return
        self._entries[key] = (self._clock() + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)

    def discard(self, key: str) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


# -- resolution -----------------------------------------------------------------------------


class TokenRejected(Exception):
    """The hub does not know the token (invalid, expired or revoked), or it is no user's."""


class NotAUsersToken(TokenRejected):
    """The token is valid, but a service's (or another non-user's): hubserve serves users."""


class HubUnavailable(Exception):
    """The hub could not be asked (network error, timeout, unexpected answer)."""


class OAuthExchangeFailed(Exception):
    """The hub refused to exchange an OAuth code for a token."""


def token_key(token: str) -> str:
    """The cache key of a token: its SHA-256, so no cache ever holds a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_token(token: str) -> bool:
    """Cheap shape check before asking the hub: printable token characters, sane length."""
    return _TOKEN_RE.fullmatch(token) is not None


class HubAuthenticator:
    """Resolves tokens to :class:`HubUser` through the hub API (or the static dev table)."""

    def __init__(
        self,
        settings: HubServiceSettings,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.required_scope = access_scope(settings.service_name)
        self.cookies = SessionCookies(settings)
        self._static: StaticTokens | None = settings.load_static_tokens()
        self._client = client or httpx.AsyncClient(timeout=settings.hub_timeout)
        self._accepted: TTLCache[HubUser] = TTLCache(
            settings.cache_size, settings.positive_ttl, clock
        )
        #: Tokens the hub refused (True), or found to be no user's ("not a user").
        self._rejected: TTLCache[bool | str] = TTLCache(
            settings.cache_size, settings.negative_ttl, clock
        )
        #: Users by token key, kept ``hub_outage_grace`` seconds after the hub last accepted
        #: the token: what a hub outage falls back on.
        self._confirmed: TTLCache[HubUser] = TTLCache(
            settings.cache_size, settings.hub_outage_grace, clock
        )
        self._in_outage = False
        self._hub_failed_at = 0.0
        self._clock = clock

    async def aclose(self) -> None:
        await self._client.aclose()

    async def resolve(self, token: str) -> HubUser:
        """The user owning ``token``; raises :class:`TokenRejected` or :class:`HubUnavailable`."""
        if self._static is not None:
            identity = self._static.get(token)
            if identity is None:
                raise TokenRejected
            return HubUser(**identity.model_dump(), scopes=[self.required_scope])
        key = token_key(token)
        user = self._accepted.get(key)
        if user is not None:
            return user
        rejected = self._rejected.get(key)
        if rejected:
            raise NotAUsersToken if rejected == "not a user" else TokenRejected
        if self._in_outage and self._clock() - self._hub_failed_at < OUTAGE_RECHECK:
            return self._during_outage(key)  # a hub that hangs would make every call wait
        try:
            user = await self._ask_hub(token)
        except TokenRejected as exc:
            self._hub_is_back()
            self._confirmed.discard(key)
            self._rejected.set(key, "not a user" if isinstance(exc, NotAUsersToken) else True)
            raise
        except HubUnavailable:
            self._hub_failed_at = self._clock()
            return self._during_outage(key)
        self._hub_is_back()
        self._accepted.set(key, user)
        self._confirmed.set(key, user)
        return user

    def _during_outage(self, key: str) -> HubUser:
        """The user the hub confirmed for ``key`` within the grace period, else 503."""
        user = self._confirmed.get(key)
        if user is None:
            raise HubUnavailable
        if not self._in_outage:
            self._in_outage = True
            log.warning(
                "the hub is not reachable: accepting tokens it confirmed in the last %.0f s",
                self.settings.hub_outage_grace,
            )
        return user

    def _hub_is_back(self) -> None:
        if self._in_outage:
            self._in_outage = False
            log.info("the hub answers again: tokens are revalidated as usual")

    async def _ask_hub(self, token: str) -> HubUser:
        try:
            response = await self._client.get(
                self.settings.hub_api_url + "/user",
                headers={"Authorization": f"token {token}"},
            )
        except httpx.HTTPError as exc:
            log.warning("hub API unreachable: %s", type(exc).__name__)
            raise HubUnavailable from None
        if response.status_code in (401, 403, 404):
            raise TokenRejected
        if response.status_code != 200:
            log.warning("hub API answered %s to GET /user", response.status_code)
            raise HubUnavailable
        try:
            model: dict[str, Any] = response.json()
            if model.get("kind", "user") != "user":
                raise NotAUsersToken
            return HubUser.model_validate(model, from_attributes=False)
        except (ValueError, ValidationError, AttributeError):
            log.warning("hub API sent an unexpected user model")
            raise HubUnavailable from None

    def authorize(self, user: HubUser) -> bool:
        """Whether the resolved token may use this service."""
        return has_scope(self.required_scope, user.scopes)

    async def exchange_code(self, code: str, code_verifier: str) -> str:
        """Trade an OAuth authorization code for the user's token (last step of login)."""
        if self.settings.api_token is None:
            raise OAuthExchangeFailed
        try:
            response = await self._client.post(
                self.settings.token_url,
                data={
                    "client_id": self.settings.client_id,
                    "client_secret": self.settings.api_token.get_secret_value(),
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": self.settings.redirect_uri,
                    "code_verifier": code_verifier,
                },
            )
        except httpx.HTTPError as exc:
            log.warning("hub OAuth token endpoint unreachable: %s", type(exc).__name__)
            raise HubUnavailable from None
        if response.status_code != 200:
            log.warning("hub refused the OAuth code exchange (%s)", response.status_code)
            raise OAuthExchangeFailed
        try:
            token = response.json()["access_token"]
        except (ValueError, KeyError, TypeError):
            raise OAuthExchangeFailed from None
        if not isinstance(token, str) or not looks_like_token(token):
            raise OAuthExchangeFailed
        return token


# -- the FastAPI dependency -----------------------------------------------------------------


class LoginRequired(Exception):
    """A browser without a valid session: send it through the hub login (OAuth) flow."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


def get_authenticator(request: Request) -> HubAuthenticator:
    authenticator = request.app.state.authenticator
    if not isinstance(authenticator, HubAuthenticator):
        raise RuntimeError("the app has no HubAuthenticator (build it with create_app)")
    return authenticator


def _unauthorized(authenticator: HubAuthenticator, detail: str) -> HTTPException:
    realm = authenticator.settings.service_name
    return HTTPException(401, detail, headers={"WWW-Authenticate": f'Bearer realm="{realm}"'})


def _here(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def _is_browser(request: Request) -> bool:
    return request.method in ("GET", "HEAD") and "text/html" in request.headers.get("accept", "")


async def require_user(request: Request) -> HubUser:
    """FastAPI dependency: the authenticated, authorized hub user of this request."""
    known = getattr(request.state, "hub_user", None)
    if isinstance(known, HubUser):  # already authenticated (by AuthenticatedRoute)
        return known
    authenticator = get_authenticator(request)
    header = request.headers.get("authorization")
    from_cookie = False
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() not in ("token", "bearer"):
            raise _unauthorized(authenticator, "use 'Authorization: token <hub API token>'")
        token = token.strip()
        if not looks_like_token(token):
            raise _unauthorized(authenticator, "invalid token")
    else:
        session_token = authenticator.cookies.read_session(request)
        if session_token is None:
            if _is_browser(request) and authenticator.settings.oauth_enabled:
                raise LoginRequired(_here(request))
            raise _unauthorized(authenticator, "authentication required")
        token, from_cookie = session_token, True
    try:
        user = await authenticator.resolve(token)
    except NotAUsersToken:
        raise HTTPException(403, "only hub users' tokens may use this service") from None
    except TokenRejected:
        if from_cookie:  # the session outlived its token: log in again
            if _is_browser(request):
                raise LoginRequired(_here(request)) from None
            raise _unauthorized(authenticator, "session expired") from None
        raise _unauthorized(authenticator, "invalid, expired or revoked token") from None
    except HubUnavailable:
        raise HTTPException(503, "the hub is not reachable, try again") from None
    if not authenticator.authorize(user):
        raise HTTPException(403, f"token lacks the scope {authenticator.required_scope}")
    request.state.hub_user = user
    return user


class AuthenticatedRoute(APIRoute):
    """A route that authenticates (:func:`require_user`) before its body is read."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        takes_json = self.body_field is not None

        async def authenticated(request: Request) -> Response:
            if takes_json:
                _json_unless_declared(request)
            await require_user(request)
            return await handler(request)

        return authenticated


#: What ``curl -d`` (or a bare ``fetch``) labels a body it was not told the type of.
_UNDECLARED = ("application/x-www-form-urlencoded", "text/plain")


def _json_unless_declared(request: Request) -> None:
    """Read a body labelled only by a client's default as the JSON it is (``curl -d
    '{"model": "iris"}'`` just works); a body that does not parse is answered as usual."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media in _UNDECLARED:
        headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
        request.scope["headers"] = [*headers, (b"content-type", b"application/json")]
        request.__dict__.pop("_headers", None)  # Starlette caches the headers it parsed
