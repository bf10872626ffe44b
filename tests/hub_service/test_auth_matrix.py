"""The auth matrix: every route of the service, for every kind of credential, against a real hub.

The routes come from the app itself (:func:`hub_service.app.create_app`'s route table, plus
the gateway, which is ASGI middleware in front of it): ``test_every_route_is_classified``
fails when a route has no entry in :data:`ROUTES`, so a new route cannot escape the matrix.
Each entry names the route's :class:`Access` class and a request that passes once the caller
is allowed (chosen so it changes nothing shared: deleting a model in use answers 409).

Credentials go from nothing through malformed and dead tokens to each kind of identity
(:data:`CREDENTIALS`); :func:`expected` is the policy of DESIGN.md ("Auth") written as a
table: 401 without an identity (a token in the query string is no identity) or with a token
the hub refuses, 403 for a valid token without ``access:services!service=hubserve``; owners
and admins manage; users and groups granted a deployment (or every hub user, when it is
public) may call it and read its status; everyone else gets 404, from the API and the gateway
alike (they cannot tell it exists). Each pair of route and credential is one test.

Two more guarantees are checked on the same deployments: replicas listen on loopback only and
refuse every call without the deployment's secret (which only the gateway holds), and no token
shows up in any answer, redirect or log of the hub, the service or a replica, however a client
sends it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts

from hub_service._settings import HubServiceSettings
from hub_service.app import create_app
from hub_service.gateway import GatewayMiddleware

from .conftest import ADMIN_USER, POSITIVE_TTL, Hub, TestBundle

ACCESS_SCOPE = "access:services!service=hubserve"
GROUP = "matrix-callers"
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2]]
READY_TIMEOUT = 90.0


class Access(Enum):
    PUBLIC = "no identity needed"
    LOGIN = "the browser login flow"
    USER = "any hub identity"
    MANAGER = "the owner or an admin"
    CALLER = "the owner, an admin or a granted caller"
    GATEWAY = "the owner, an admin or a granted caller, through the gateway"


@dataclass(frozen=True)
class Probe:
    """How to call one route: the path below the service prefix, with ``{owner}``,
    ``{model}``, ``{version}``, ``{deployment}`` filled in per credential."""

    access: Access
    method: str
    path: str
    allowed: int
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Runs as the owner before the call (makes what an allowed call will consume).
    setup: Callable[[World], object] | None = None


#: Every route: ``(method, path template below the prefix)`` → how to probe it.
ROUTES: dict[tuple[str, str], Probe] = {
    ("GET", ""): Probe(Access.PUBLIC, "GET", "", 302),
    ("GET", "healthz"): Probe(Access.PUBLIC, "GET", "healthz", 200),
    ("GET", "docs"): Probe(Access.PUBLIC, "GET", "docs", 200),
    ("GET", "openapi.json"): Probe(Access.PUBLIC, "GET", "openapi.json", 200),
    ("GET", "login"): Probe(Access.LOGIN, "GET", "login", 302),
    ("GET", "oauth_callback"): Probe(Access.LOGIN, "GET", "oauth_callback", 400),
    ("GET", "api/me"): Probe(Access.USER, "GET", "api/me", 200),
    ("GET", "api/models"): Probe(Access.USER, "GET", "api/models", 200),
    ("POST", "api/models"): Probe(
        Access.USER,
        "POST",
        "api/models",
        422,
        content=b"",
        headers={"Content-Type": "application/gzip"},
    ),
    ("GET", "api/models/{owner}/{name}"): Probe(
        Access.MANAGER, "GET", "api/models/{owner}/{model}", 200
    ),
    ("DELETE", "api/models/{owner}/{name}"): Probe(
        Access.MANAGER,
        "DELETE",
        "api/models/{owner}/{model}",
        409,  # in use: nothing deleted
    ),
    ("GET", "api/models/{owner}/{name}/versions/{version}"): Probe(
        Access.MANAGER, "GET", "api/models/{owner}/{model}/versions/{version}", 200
    ),
    ("GET", "api/models/{owner}/{name}/versions/{version}/download"): Probe(
        Access.MANAGER, "GET", "api/models/{owner}/{model}/versions/{version}/download", 200
    ),
    ("DELETE", "api/models/{owner}/{name}/versions/{version}"): Probe(
        Access.MANAGER, "DELETE", "api/models/{owner}/{model}/versions/{version}", 409
    ),
    ("PUT", "api/models/{owner}/{name}/tags/{tag}"): Probe(
        Access.MANAGER,
        "PUT",
        "api/models/{owner}/{model}/tags/matrix",
        200,
        json={"version": "{version}"},
    ),
    ("DELETE", "api/models/{owner}/{name}/tags/{tag}"): Probe(
        Access.MANAGER,
        "DELETE",
        "api/models/{owner}/{model}/tags/doomed",
        204,
        setup=lambda world: world.owner_call(
            "PUT", f"api/models/{world.owner}/iris/tags/doomed", json={"version": world.version}
        ),
    ),
    ("GET", "api/deployments"): Probe(Access.USER, "GET", "api/deployments", 200),
    ("POST", "api/deployments"): Probe(Access.USER, "POST", "api/deployments", 422, json={}),
    ("GET", "api/deployments/{owner}/{name}"): Probe(
        Access.CALLER, "GET", "api/deployments/{owner}/{deployment}", 200
    ),
    ("PATCH", "api/deployments/{owner}/{name}"): Probe(
        Access.MANAGER, "PATCH", "api/deployments/{owner}/{deployment}", 200, json={"replicas": 1}
    ),
    ("DELETE", "api/deployments/{owner}/{name}"): Probe(
        Access.MANAGER,
        "DELETE",
        "api/deployments/{owner}/doomed",
        204,
        setup=lambda world: world.owner_call(
            "POST", "api/deployments", json={"model": "iris", "name": "doomed", "replicas": 0}
        ),
    ),
    ("GET", "api/deployments/{owner}/{name}/logs"): Probe(
        Access.MANAGER, "GET", "api/deployments/{owner}/{deployment}/logs", 200
    ),
    ("*", "d/{owner}/{name}/{path}"): Probe(
        Access.GATEWAY, "POST", "d/{owner}/{deployment}/predict", 200, json=IRIS_ROWS
    ),
}


@dataclass
class World:
    """The hub users, tokens and deployments the matrix is played against."""

    hub: Hub
    owner: str
    version: str
    tokens: dict[str, str]
    users: dict[str, str]

    def owner_call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"token {self.tokens['owner']}", **kwargs.pop("headers", {})}
        return httpx.request(
            method, f"{self.hub.service_url}/{path}", headers=headers, timeout=30, **kwargs
        )


@dataclass(frozen=True)
class Credential:
    """What a call carries: headers, query; ``identity`` names the world's user it acts as
    (``None``: no valid identity); ``deployment`` is the deployment it targets."""

    identity: str | None
    headers: Callable[[World], dict[str, str]] = lambda world: {}
    params: Callable[[World], dict[str, str]] = lambda world: {}
    deployment: str = "iris"


def _token(name: str) -> Callable[[World], dict[str, str]]:
    return lambda world: {"Authorization": f"token {world.tokens[name]}"}


CREDENTIALS: dict[str, Credential] = {
    "none": Credential(None),
    "bad-scheme": Credential(None, lambda world: {"Authorization": "Basic b3duZXI6cHc="}),
    "garbage": Credential(None, lambda world: {"Authorization": "token not a token!"}),
    "overlong": Credential(None, lambda world: {"Authorization": "token " + "a" * 4096}),
    "unknown-token": Credential(None, lambda world: {"Authorization": f"token {uuid.uuid4().hex}"}),
    "token-in-query": Credential(None, params=lambda world: {"token": world.tokens["owner"]}),
    "expired": Credential(None, _token("expired")),
    "revoked": Credential(None, _token("revoked")),
    "under-scoped": Credential(None, _token("under-scoped")),
    "owner": Credential("owner", _token("owner")),
    "admin": Credential("admin", _token("admin")),
    "other-user": Credential("other", _token("other")),
    "group-member": Credential("member", _token("member")),
    "granted-user": Credential("granted", _token("granted")),
    "public-grant": Credential("other", _token("other"), deployment="iris-public"),
}
#: Credentials the service must refuse outright, and with what.
REFUSED = {
    "none": 401,
    "bad-scheme": 401,
    "token-in-query": 401,
    "garbage": 401,
    "overlong": 401,
    "unknown-token": 401,
    "expired": 401,
    "revoked": 401,
    "under-scoped": 403,
}


def expected(probe: Probe, credential_id: str) -> int:
    """The policy: what ``credential_id`` gets from the route ``probe`` describes."""
    if probe.access in (Access.PUBLIC, Access.LOGIN):
        return probe.allowed
    if credential_id in REFUSED:
        return REFUSED[credential_id]
    identity = CREDENTIALS[credential_id].identity
    if identity in ("owner", "admin") or probe.access is Access.USER:
        return probe.allowed
    if probe.access is Access.MANAGER:
        return 404
    granted = identity in ("member", "granted") or credential_id == "public-grant"
    if granted:
        return probe.allowed
    return 404


# -- the route table ------------------------------------------------------------------------


def _route_table(tmp: Path) -> set[tuple[str, str]]:
    """``(method, path below the prefix)`` of every route the app serves, the gateway included."""
    settings = HubServiceSettings(
        api_token="t" * 32,  # with a hub token, so the OAuth login routes exist too
        data_dir=tmp / "data",
        store=str(tmp / "store"),
    )
    app = create_app(settings)
    prefix = settings.base_url
    found: set[tuple[str, str]] = set()
    for context in iter_route_contexts(app.routes):
        path = context.path or ""
        assert path.startswith(prefix.rstrip("/")), f"{path} is outside the service prefix"
        below = path[len(prefix) :] if path != prefix.rstrip("/") else ""
        found.update((method, below) for method in getattr(context, "methods", None) or {"*"})
    for middleware in app.user_middleware:
        if middleware.cls is GatewayMiddleware:
            gateway_prefix = middleware.kwargs["gateway"].prefix
            found.add(("*", gateway_prefix[len(prefix) :] + "{owner}/{name}/{path}"))
    found.discard(("HEAD", "docs"))
    found.discard(("HEAD", "openapi.json"))
    return found


def test_every_route_is_classified(tmp_path: Path) -> None:
    table = _route_table(tmp_path)
    unclassified = sorted(table - set(ROUTES))
    assert not unclassified, (
        f"routes missing from the auth matrix (add them to ROUTES): {unclassified}"
    )
    stale = sorted(set(ROUTES) - table)
    assert not stale, f"ROUTES names routes the app no longer has: {stale}"


# -- the matrix -----------------------------------------------------------------------------


def _create_token(hub: Hub, user: str, **body: Any) -> tuple[str, str]:
    response = hub.api.post(f"/users/{user}/tokens", json={"note": "auth matrix", **body})
    assert response.status_code == 201, response.text
    return response.json()["token"], response.json()["id"]


def _wait_ready(world: World, deployment: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        status = world.owner_call("GET", f"api/deployments/{world.owner}/{deployment}").json()
        if status["status"]["ready"] >= 1:
            return
        assert time.monotonic() < deadline, status["status"]
        time.sleep(0.2)


@pytest.fixture(scope="module")
def world(hub: Hub, iris_bundles: tuple[TestBundle, TestBundle]) -> Iterator[World]:
    owner, other, member, granted = (
        hub.create_user(prefix) for prefix in ("owner", "other", "member", "granted")
    )
    hub.add_to_group(GROUP, member)
    tokens = {
        "owner": hub.create_token(owner)[0],
        "admin": hub.create_token(ADMIN_USER)[0],
        "other": hub.create_token(other)[0],
        "member": hub.create_token(member)[0],
        "granted": hub.create_token(granted)[0],
        "under-scoped": hub.create_token(other, scopes=[f"read:users:name!user={other}"])[0],
    }
    tokens["expired"], _ = _create_token(hub, other, expires_in=1)
    expires = time.monotonic() + 1
    tokens["revoked"], revoked_id = _create_token(hub, other)
    world = World(hub=hub, owner=owner, version="", tokens=tokens, users={"other": other})
    seen = httpx.get(f"{hub.service_url}/api/me", headers=_token("revoked")(world))
    assert seen.status_code == 200, seen.text  # cached as valid: revocation must still show
    hub.revoke_token(other, revoked_id)

    first = iris_bundles[0]
    pushed = world.owner_call(
        "POST", "api/models", content=first.data, headers={"Content-Type": "application/gzip"}
    )
    assert pushed.status_code == 201, pushed.text
    world.version = pushed.json()["version"]
    for name, access in (
        ("iris", {"groups": [GROUP], "users": [granted]}),
        ("iris-public", {"public": True}),
    ):
        created = world.owner_call(
            "POST", "api/deployments", json={"model": "iris", "name": name, "access": access}
        )
        assert created.status_code == 201, created.text
    for name in ("iris", "iris-public"):
        _wait_ready(world, name)
    # The revoked token has left the service's cache, the expired one has expired.
    time.sleep(max(POSITIVE_TTL + 0.3, expires + 0.5 - time.monotonic()))
    yield world
    for name in ("iris", "iris-public", "doomed"):
        world.owner_call("DELETE", f"api/deployments/{owner}/{name}")


def _fill(text: str, world: World, credential: Credential) -> str:
    return text.format(
        owner=world.owner, model="iris", version=world.version, deployment=credential.deployment
    )


@pytest.mark.parametrize("credential_id", list(CREDENTIALS))
@pytest.mark.parametrize("route", list(ROUTES), ids=lambda key: f"{key[0]} {key[1] or '/'}")
def test_access(world: World, route: tuple[str, str], credential_id: str) -> None:
    probe = ROUTES[route]
    credential = CREDENTIALS[credential_id]
    want = expected(probe, credential_id)
    if probe.setup is not None:
        probe.setup(world)
    json = probe.json
    if isinstance(json, dict):
        json = {
            key: _fill(value, world, credential) if isinstance(value, str) else value
            for key, value in json.items()
        }
    response = httpx.request(
        probe.method,
        f"{world.hub.service_url}/{_fill(probe.path, world, credential)}",
        headers={**probe.headers, **credential.headers(world)},
        params=credential.params(world),
        json=json,
        content=probe.content,
        timeout=30,
    )
    assert response.status_code == want, (probe.access.value, response.text[:500])
    if want == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    if want in (401, 403):
        assert response.json()["detail"], response.text
    for token in world.tokens.values():
        assert token not in response.text
        assert token not in response.headers.get("location", "")
    if probe.setup is not None and response.status_code != probe.allowed:
        # A refused caller left what the setup made: take it away as the owner.
        world.owner_call(probe.method, _fill(probe.path, world, credential))


# -- runtimes trust only the gateway --------------------------------------------------------


def _replicas(world: World) -> list[dict[str, Any]]:
    records = [
        json.loads(path.read_text())
        for path in (world.hub.root / "service/local/replicas").glob("*.json")
    ]
    return [r for r in records if str(r["deployment"]).startswith(f"{world.owner}/")]


#: 127.0.0.1 as ``/proc/net/tcp`` writes it.
LOOPBACK = "0100007F"


def _listening_addresses(port: int) -> set[str]:
    """The local addresses with a socket listening on ``port`` (Linux's TCP tables)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.add(address)
    return found


def test_replicas_only_answer_the_gateway(world: World) -> None:
    replicas = _replicas(world)
    assert len(replicas) == 2, replicas  # iris and iris-public
    owner_token = world.tokens["owner"]
    for replica in replicas:
        port = int(replica["port"])
        assert _listening_addresses(port) == {LOOPBACK}  # not 0.0.0.0, not another interface
        url = f"http://127.0.0.1:{port}/predict"
        refused = {
            "no secret": {},
            "the caller's hub token": {"Authorization": f"token {owner_token}"},
            "the hub token as bearer": {"Authorization": f"Bearer {owner_token}"},
            "a wrong secret": {"x-hubserve-token": "not-the-secret"},
            "the user header alone": {"x-hubserve-user": world.owner},
        }
        for what, headers in refused.items():
            response = httpx.post(url, json=IRIS_ROWS, headers=headers, timeout=10)
            assert response.status_code in (401, 403), (what, response.status_code)
            assert owner_token not in response.text
        # The same call through the gateway works: the replica is up, only the secret is missing.
        through = world.owner_call("POST", f"d/{world.owner}/iris/predict", json=IRIS_ROWS)
        assert through.status_code == 200, through.text


# -- tokens stay out of logs, URLs and answers ----------------------------------------------


def test_tokens_never_appear_in_logs_urls_or_answers(world: World) -> None:
    """Send every token (valid, refused, revoked, expired, made up) every way a client might —
    header, query string, cookie, to the API, the gateway and the browser login — then search
    every answer, redirect and log for any of them, or a 12-character prefix of one."""
    hub = world.hub
    made_up = uuid.uuid4().hex
    tokens = [*world.tokens.values(), made_up]
    answers: list[str] = []

    def send(method: str, path: str, **kwargs: Any) -> None:
        response = httpx.request(method, f"{hub.service_url}/{path}", timeout=30, **kwargs)
        answers.append(response.text)
        answers.append(response.headers.get("location", ""))
        answers.extend(response.headers.get_list("set-cookie"))

    paths = [
        ("GET", "api/me"),
        ("GET", f"api/models/{world.owner}/iris"),
        ("GET", f"api/deployments/{world.owner}/iris/logs"),
        ("POST", f"d/{world.owner}/iris/predict"),
        ("POST", f"d/{world.owner}/nothing/predict"),
    ]
    for token in tokens:
        for method, path in paths:
            body = {"json": IRIS_ROWS} if method == "POST" else {}
            send(method, path, headers={"Authorization": f"token {token}"}, **body)
            send(method, path, headers={"Authorization": f"Bearer {token}"}, **body)
            send(method, path, params={"token": token}, **body)
            send(method, path, params={"token": token}, headers={"Accept": "text/html"}, **body)
            send(method, path, cookies={"hubserve-session": token}, **body)
            send(method, path, cookies={"jupyterhub-session-id": token}, **body)
        # A granted call that carries a token in its query too: the replica must not see it.
        send(
            "POST",
            f"d/{world.owner}/iris/predict",
            params={"token": token},
            headers={"Authorization": f"token {world.tokens['owner']}"},
            json=IRIS_ROWS,
        )
        send("GET", "login", params={"next": f"/services/hubserve/api/me?token={token}"})
    time.sleep(0.5)  # let the processes flush their logs

    logs = {hub.log: hub.log.read_text(errors="replace")}
    for log in (hub.root / "service").rglob("*.log"):
        logs[log] = log.read_text(errors="replace")
    # The service logs into the hub's log (a managed service); each replica has its own.
    assert "uvicorn.access" in logs[hub.log]
    assert len([log for log in logs if log.parent.name in ("iris", "iris-public")]) >= 2
    for token in tokens:
        for needle in (token, token[:12]):
            for answer in answers:
                assert needle not in answer, f"a token in an answer: {answer[:300]}"
            for log, text in logs.items():
                assert needle not in text, f"a token in {log}"
