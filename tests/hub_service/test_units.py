"""Unit tests of hub_service that need no hub: scopes, caches, resolver, app, config."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from traitlets.config import Config

from hub_service import configure_jupyterhub
from hub_service._settings import HubServiceSettings, ServiceLimits
from hub_service.app import create_app
from hub_service.auth import (
    HubAuthenticator,
    HubUnavailable,
    TokenRejected,
    TTLCache,
    has_scope,
    token_key,
)
from hub_service.config import HUB_DEFAULT_SERVER_SCOPES, AddScopes, HubserveURL
from hub_service.gateway import _without_tokens
from hub_service.oauth import pkce_pair, safe_next
from model_runtime.store import StoreSettings

ACCESS = "access:services!service=hubserve"
TOKEN = "f" * 32


# -- scopes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "granted"),
    [
        ([ACCESS], True),
        (["access:services"], True),
        (["access:services!service=other"], False),
        (["access:services!service=other", ACCESS], True),
        (["access:servers!server=alice/", "read:users:name!user=alice"], False),
        (["access:services!service"], False),  # unexpanded filter grants nothing
        (["access:services!service=hubserve-x"], False),
        ([], False),
    ],
)
def test_access_scope_expansion(held: list[str], granted: bool) -> None:
    assert has_scope(ACCESS, held) is granted


def test_unfiltered_requirement_needs_an_unfiltered_scope() -> None:
    assert has_scope("read:users", ["read:users"])
    assert not has_scope("read:users", ["read:users!user=alice"])
    assert has_scope("read:users!user=alice", ["read:users!user=alice"])
    assert not has_scope("read:users!group=g", ["read:users!user=alice"])


# -- caches ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ttl_cache_expires_and_stays_bounded() -> None:
    clock = Clock()
    cache: TTLCache[int] = TTLCache(maxsize=2, ttl=5, clock=clock)
    cache.set("a", 1)
    cache.set("b", 2)
    assert cache.get("a") == 1  # now "b" is the least recently used
    cache.set("c", 3)
    assert len(cache) == 2
    assert cache.get("b") is None
    clock.now = 5
    assert cache.get("a") is None
    assert len(cache) == 1


def test_zero_ttl_disables_the_cache() -> None:
    cache: TTLCache[int] = TTLCache(maxsize=2, ttl=0)
    cache.set("a", 1)
    assert cache.get("a") is None


# -- resolver --------------------------------------------------------------------------------

Handler = Callable[[httpx.Request], httpx.Response]


def settings(**overrides: Any) -> HubServiceSettings:
    values: dict[str, Any] = {
        "hub_api_url": "http://hub.test/hub/api",
        "api_token": SecretStr("service-secret-token"),
        "positive_ttl": 60,
        "negative_ttl": 5,
        **overrides,
    }
    return HubServiceSettings(**values)


def user_model(name: str = "alice", scopes: list[str] | None = None, **extra: Any) -> Any:
    return {
        "kind": "user",
        "name": name,
        "admin": False,
        "groups": ["physics"],
        "scopes": [ACCESS, f"read:users:name!user={name}"] if scopes is None else scopes,
        **extra,
    }


def authenticator(handler: Handler, clock: Clock, **overrides: Any) -> HubAuthenticator:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return HubAuthenticator(settings(**overrides), client=client, clock=clock)


def test_resolver_caches_accepted_tokens_for_the_positive_ttl() -> None:
    calls: list[str] = []

    def hub(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers["authorization"])
        return httpx.Response(200, json=user_model())

    clock = Clock()
    auth = authenticator(hub, clock)

    async def scenario() -> None:
        assert (await auth.resolve(TOKEN)).name == "alice"
        assert (await auth.resolve(TOKEN)).groups == ["physics"]
        clock.now = 60
        await auth.resolve(TOKEN)
        await auth.aclose()

    asyncio.run(scenario())
    assert calls == [f"token {TOKEN}"] * 2
    assert TOKEN not in repr(auth._accepted._entries)
    assert token_key(TOKEN) in auth._accepted._entries


def test_resolver_caches_rejections_only_briefly() -> None:
    calls = 0

    def hub(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(403, json={"status": 403})

    clock = Clock()
    auth = authenticator(hub, clock)

    async def scenario() -> None:
        for _ in range(3):
            with pytest.raises(TokenRejected):
                await auth.resolve(TOKEN)
        assert calls == 1
        clock.now = 5
        with pytest.raises(TokenRejected):
            await auth.resolve(TOKEN)
        assert calls == 2
        await auth.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "answer",
    [
        lambda r: httpx.Response(500),
        lambda r: httpx.Response(200, text="not json"),
        lambda r: httpx.Response(200, json={"kind": "user"}),
    ],
)
def test_hub_trouble_is_unavailable_and_not_cached(answer: Handler) -> None:
    calls = 0

    def hub(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return answer(request)

    auth = authenticator(hub, Clock())

    async def scenario() -> None:
        for _ in range(2):
            with pytest.raises(HubUnavailable):
                await auth.resolve(TOKEN)
        await auth.aclose()

    asyncio.run(scenario())
    assert calls == 2


def test_service_tokens_are_not_users() -> None:
    def hub(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"kind": "service", "name": "culler", "scopes": []})

    auth = authenticator(hub, Clock())

    async def scenario() -> None:
        with pytest.raises(TokenRejected):
            await auth.resolve(TOKEN)
        await auth.aclose()

    asyncio.run(scenario())


# -- the app ---------------------------------------------------------------------------------


def test_app_with_a_hub() -> None:
    def hub(request: httpx.Request) -> httpx.Response:
        token = request.headers["authorization"].removeprefix("token ")
        if token == TOKEN:
            return httpx.Response(200, json=user_model())
        if token == "n" * 32:
            return httpx.Response(200, json=user_model(scopes=["read:users:name!user=alice"]))
        if token == "d" * 32:
            raise httpx.ConnectError("down")
        return httpx.Response(403)

    auth = authenticator(hub, Clock())
    with TestClient(create_app(auth.settings, authenticator=auth)) as client:
        me = "/services/hubserve/api/me"
        ok = client.get(me, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        expected = {k: v for k, v in user_model().items() if k != "kind"}
        assert ok.json() == expected
        assert TOKEN not in ok.text
        assert client.get(me, headers={"Authorization": f"token {'n' * 32}"}).status_code == 403
        unknown = client.get(me, headers={"Authorization": f"token {'x' * 32}"})
        assert unknown.status_code == 401
        assert unknown.headers["www-authenticate"].startswith("Bearer")
        assert client.get(me, headers={"Authorization": f"token {'d' * 32}"}).status_code == 503
        assert client.get(me, headers={"Authorization": "token"}).status_code == 401
        assert client.get("/services/hubserve/", follow_redirects=False).status_code == 302
        assert client.get("/services/hubserve/docs").status_code == 200

        browser = client.get(me, headers={"Accept": "text/html"}, follow_redirects=False)
        assert browser.status_code == 302
        location = urlsplit(browser.headers["location"])
        assert location.path == "/hub/api/oauth2/authorize"
        query = parse_qs(location.query)
        assert query["client_id"] == ["service-hubserve"]
        assert query["redirect_uri"] == ["/services/hubserve/oauth_callback"]
        assert query["code_challenge_method"] == ["S256"]
        assert "hubserve-oauth-state" in browser.cookies


def test_static_token_dev_mode(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({TOKEN: {"name": "dev", "admin": True, "groups": ["g"]}}))
    app = create_app(HubServiceSettings(static_token_file=tokens))
    with TestClient(app) as client:
        me = "/services/hubserve/api/me"
        response = client.get(me, headers={"Authorization": f"token {TOKEN}"})
        assert response.status_code == 200
        assert response.json() == {
            "name": "dev",
            "admin": True,
            "groups": ["g"],
            "scopes": [ACCESS],
        }
        assert client.get(me, headers={"Authorization": f"token {'e' * 32}"}).status_code == 401
        # No browser login without a hub: browsers get the 401 too.
        assert client.get(me, headers={"Accept": "text/html"}).status_code == 401
        assert client.get("/services/hubserve/login").status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "api/deployments"),
        ("PATCH", "api/deployments/dev/x"),
        ("PUT", "api/models/dev/x/tags/t"),
    ],
)
def test_credentials_are_checked_before_the_body(tmp_path: Path, method: str, path: str) -> None:
    """A caller without valid credentials learns nothing about the body it sent."""
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({TOKEN: {"name": "dev"}}))
    app = create_app(HubServiceSettings(static_token_file=tokens, data_dir=tmp_path / "data"))
    url = f"/services/hubserve/{path}"
    broken = {"content": b"{not json", "headers": {"Content-Type": "application/json"}}
    with TestClient(app) as client:
        assert client.request(method, url, **broken).status_code == 401
        bad = {"Authorization": f"token {'e' * 32}", **broken["headers"]}
        assert (
            client.request(method, url, content=broken["content"], headers=bad).status_code == 401
        )
        good = {"Authorization": f"token {TOKEN}", **broken["headers"]}
        answer = client.request(method, url, content=broken["content"], headers=good)
        assert answer.status_code in (400, 422), answer.text


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTERHUB_SERVICE_NAME", "models")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_URL", "http://10.0.0.5:9000")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/jhub/services/models/")
    monkeypatch.setenv("JUPYTERHUB_API_URL", "http://10.0.0.1:8081/jhub/hub/api/")
    monkeypatch.setenv("JUPYTERHUB_BASE_URL", "/jhub/")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "secret-token-value")
    monkeypatch.setenv("HUBSERVE_LIMITS", '{"max_replicas": 3}')
    monkeypatch.setenv("HUBSERVE_POSITIVE_TTL", "2.5")
    s = HubServiceSettings()
    assert (s.bind_host, s.bind_port) == ("10.0.0.5", 9000)
    assert s.client_id == "service-models"
    assert s.redirect_uri == "/jhub/services/models/oauth_callback"
    assert s.authorize_url == "/jhub/hub/api/oauth2/authorize"
    assert s.token_url == "http://10.0.0.1:8081/jhub/hub/api/oauth2/token"
    assert s.limits.max_replicas == 3
    assert s.positive_ttl == 2.5
    assert s.oauth_enabled
    assert "secret-token-value" not in repr(s)
    assert s.cookie_key() == HubServiceSettings().cookie_key()  # stable across restarts


def test_pkce_pair_is_s256() -> None:
    verifier, challenge = pkce_pair()
    digest = hashlib.sha256(verifier.encode()).digest()
    assert challenge == base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert 43 <= len(verifier) <= 128


@pytest.mark.parametrize(
    ("next_url", "expected"),
    [
        ("/services/hubserve/api/me?x=1", "/services/hubserve/api/me?x=1"),
        ("https://evil.example/services/hubserve/", "/services/hubserve/"),
        ("//evil.example/services/hubserve/", "/services/hubserve/"),
        ("/services/hubserve/../../hub/admin", "/services/hubserve/"),
        ("/hub/home", "/services/hubserve/"),
        (None, "/services/hubserve/"),
    ],
)
def test_next_url_stays_under_the_prefix(next_url: str | None, expected: str) -> None:
    assert safe_next(next_url, "/services/hubserve/") == expected


# -- configure_jupyterhub --------------------------------------------------------------------


def test_configure_jupyterhub_wires_service_roles_and_spawner() -> None:
    c = Config()
    c.JupyterHub.load_roles = [{"name": "user", "scopes": ["self", "read:groups!group=g"]}]
    c.JupyterHub.services.append({"name": "other", "api_token": "x" * 16})
    for _ in range(2):  # idempotent
        configure_jupyterhub(
            c,
            port=10200,
            store=StoreSettings(
                store="s3://models", s3_endpoint="minio:9000", s3_secret_key=SecretStr("k")
            ),
            database_url="sqlite:////srv/hubserve.db",
            limits={"max_replicas": 4},
        )
    services = c.JupyterHub.services
    assert [s["name"] for s in services] == ["other", "hubserve"]
    service = services[1]
    assert service["url"] == "http://127.0.0.1:10200"
    assert service["command"][1:] == ["-m", "hub_service"]
    env = service["environment"]
    assert env["HUBSERVE_STORE"] == "s3://models"
    assert env["HUBSERVE_S3_SECRET_KEY"] == "k"
    assert env["HUBSERVE_DATABASE_URL"] == "sqlite:////srv/hubserve.db"
    assert ServiceLimits.model_validate_json(env["HUBSERVE_LIMITS"]).max_replicas == 4
    assert c.JupyterHub.load_roles == [
        {"name": "user", "scopes": ["self", "read:groups!group=g", ACCESS]}
    ]
    assert c.Spawner.server_token_scopes == [*HUB_DEFAULT_SERVER_SCOPES, ACCESS]
    url = c.Spawner.environment["HUBSERVE_URL"]
    assert isinstance(url, HubserveURL)

    class Spawner:
        public_hub_url = ""

    assert url(Spawner()) == "http://127.0.0.1:10200/services/hubserve/"
    Spawner.public_hub_url = "https://hub.example.org/jhub/hub/"
    assert url(Spawner()) == "https://hub.example.org/jhub/services/hubserve/"


def test_configure_jupyterhub_service_role_and_defaults() -> None:
    c = Config()
    configure_jupyterhub(c, name="models", service_scopes=["read:users:name"])
    assert c.JupyterHub.load_roles == [
        {
            "name": "models-service",
            "description": "What the models model-serving service may do at the hub",
            "scopes": ["read:users:name"],
            "services": ["models"],
        },
        {"name": "user", "scopes": ["self", "access:services!service=models"]},
    ]
    assert c.JupyterHub.services[0]["environment"] == {"HUBSERVE_BACKEND": "local"}
    url = c.Spawner.environment["HUBSERVE_URL"]
    assert url(object()) == "http://127.0.0.1:10101/services/models/"
    with pytest.raises(ValueError, match="backend"):
        configure_jupyterhub(c, backend="docker")  # type: ignore[arg-type]


def test_configure_jupyterhub_extends_callable_token_scopes() -> None:
    c = Config()
    c.Spawner.server_token_scopes = lambda spawner: ["users:activity!user"]
    configure_jupyterhub(c)
    configure_jupyterhub(c)
    scopes = c.Spawner.server_token_scopes
    assert isinstance(scopes, AddScopes)
    assert not isinstance(scopes.inner, AddScopes)
    assert scopes(object()) == ["users:activity!user", ACCESS]
    url = HubserveURL(name="hubserve", internal_url="", public_url="https://hub.example.org/")
    assert url(object()) == "https://hub.example.org/services/hubserve/"


# -- gateway ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "forwarded"),
    [
        ("", ""),
        ("a=1&b=2", "a=1&b=2"),
        ("token=abc", ""),
        ("a=1&token=abc&b=2", "a=1&b=2"),
        ("Access_Token=abc&tokens=3", "tokens=3"),
        ("%74oken=abc&x", "x"),
    ],
)
def test_gateway_drops_tokens_from_queries(query: str, forwarded: str) -> None:
    assert _without_tokens(query) == forwarded


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain"])
def test_api_bodies_are_json_whatever_a_client_labels_them(
    tmp_path: Path, content_type: str
) -> None:
    """``curl -d '{"model": ...}'`` (form-urlencoded unless told) deploys like a JSON post."""
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({TOKEN: {"name": "dev"}}))
    app = create_app(HubServiceSettings(static_token_file=tokens, data_dir=tmp_path / "data"))
    headers = {"Authorization": f"token {TOKEN}", "Content-Type": content_type}
    with TestClient(app) as client:
        url = "/services/hubserve/api/deployments"
        answer = client.post(url, content=b'{"model": "no-such-model"}', headers=headers)
        assert answer.status_code == 404, answer.text  # read as JSON: the model is missing
        assert "no-such-model" in answer.json()["detail"]
