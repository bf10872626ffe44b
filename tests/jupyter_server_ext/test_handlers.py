"""The server extension end to end: Jupyter server → extension → live hub service → runtime.

Most tests talk to the live standalone service (``hub_service`` fixture); the header and
size tests use a small in-process upstream that echoes what it received, to see exactly
what the extension sends on and relays back.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from jupyter_server.base.handlers import APIHandler
from tornado.httpclient import HTTPResponse

import jupyter_extension
from jupyter_extension.serverext import HubserveExtension
from jupyter_extension.serverext._routes import RouteError, resolve
from jupyter_extension.serverext.handlers import ConfigHandler, ProxyHandler
from tests.live_hub import REPO, free_port

from .conftest import ALICE_TOKEN, MAX_UPLOAD_BYTES, UPSTREAM_TOKEN, EchoUpstream, LiveService

Fetch = Callable[..., Awaitable[HTTPResponse]]
READY_TIMEOUT = 90
SETOSA = [[5.1, 3.5, 1.4, 0.2]]


def body(response: HTTPResponse) -> Any:
    return json.loads(response.body or b"null")


async def call(
    jp_fetch: Fetch, path: str, method: str = "GET", payload: Any = None, **kwargs: Any
) -> HTTPResponse:
    """``jp_fetch`` that returns error answers instead of raising them."""
    if payload is not None:
        kwargs["body"] = json.dumps(payload)
        kwargs.setdefault("headers", {})["Content-Type"] = "application/json"
    return await jp_fetch(
        *path.split("/"),
        method=method,
        raise_error=False,
        allow_nonstandard_methods=True,
        **kwargs,
    )


def assert_error(response: HTTPResponse, status: int, *fragments: str) -> str:
    assert response.code == status, (response.code, response.body)
    assert response.headers["Content-Type"].startswith("application/json")
    detail = body(response)["detail"]
    for fragment in fragments:
        assert fragment in detail
    assert "Traceback" not in detail
    return str(detail)


# -- configuration, without a server --------------------------------------------------------


def test_service_url_comes_from_hubserve_url() -> None:
    settings = HubserveExtension(
        environ={
            "HUBSERVE_URL": "https://hub.example.org/services/hubserve",
            "JUPYTERHUB_API_URL": "http://10.0.0.1:8081/hub/api",
            "JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:45678/user/alice/",
            "JUPYTERHUB_API_TOKEN": "server-token",
            "JUPYTERHUB_USER": "alice",
        }
    )
    assert settings.service_url == "https://hub.example.org/services/hubserve/"
    assert settings.public_url == "https://hub.example.org/services/hubserve/"
    assert settings.token == "server-token"
    assert settings.user == "alice"
    assert settings.problem() is None


def test_service_url_derived_from_the_hub_api_url_not_the_server_url() -> None:
    settings = HubserveExtension(
        environ={
            "JUPYTERHUB_API_URL": "http://10.0.0.1:8081/prefix/hub/api",
            "JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:45678/prefix/user/alice/",
            "JUPYTERHUB_PUBLIC_HUB_URL": "https://hub.example.org/prefix/hub/",
            "JUPYTERHUB_API_TOKEN": "server-token",
        }
    )
    assert settings.service_url == "http://10.0.0.1:8081/prefix/services/hubserve/"
    assert settings.public_url == "https://hub.example.org/prefix/services/hubserve/"


def test_explicit_configuration_beats_the_environment() -> None:
    from traitlets.config import Config

    config = Config({"HubserveExtension": {"service_url": "http://127.0.0.1:9/x", "token": " t "}})
    settings = HubserveExtension(
        config=config,
        environ={"HUBSERVE_URL": "http://elsewhere/", "JUPYTERHUB_API_TOKEN": "env"},
    )
    assert (settings.service_url, settings.token) == ("http://127.0.0.1:9/x/", "t")
    assert settings.public_url == "http://elsewhere/"  # not configured: from the environment


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({}, "not configured"),
        ({"HUBSERVE_URL": "ftp://host/x"}, "not an http"),
        ({"HUBSERVE_URL": "http://host/x"}, "no token"),
    ],
)
def test_unusable_configuration_is_explained(environ: dict[str, str], fragment: str) -> None:
    problem = HubserveExtension(environ=environ).problem()
    assert problem is not None and fragment in problem


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "api/me", "api/me"),
        ("POST", "api/models", "api/models"),
        ("GET", "api/models/a%40b.c/iris/versions/latest", "api/models/a@b.c/iris/versions/latest"),
        ("PUT", "api/models/alice/iris/tags/stable", "api/models/alice/iris/tags/stable"),
        ("PATCH", "api/deployments/alice/iris", "api/deployments/alice/iris"),
        ("GET", "api/deployments/alice/iris/logs", "api/deployments/alice/iris/logs"),
        ("POST", "d/alice/iris/v2/models/iris/infer", "d/alice/iris/v2/models/iris/infer"),
        ("GET", "d/alice/iris/", "d/alice/iris/"),
        ("GET", "d/alice/iris/a%20b", "d/alice/iris/a%20b"),
    ],
)
def test_allowlisted_routes(method: str, path: str, expected: str) -> None:
    assert resolve(method, path).path == expected


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "api/other", 404),
        ("GET", "api/models/alice", 404),
        ("GET", "api/deployments/alice/iris/logs/x", 404),
        ("GET", "d/alice/iris", 404),
        ("GET", "d/alice/iris/../../../api/me", 404),
        ("GET", "d/alice/iris/%2e%2e/x", 404),
        ("GET", "d/alice/iris/a%2Fb", 404),
        ("GET", "api//me", 404),
        ("GET", "api/models/alice/iris/", 404),
        ("GET", "d/alice/iris/%ff", 404),
        ("DELETE", "api/me", 405),
        ("POST", "api/deployments/alice/iris", 405),
        ("HEAD", "d/alice/iris/x", 405),
    ],
)
def test_other_routes_are_refused(method: str, path: str, status: int) -> None:
    with pytest.raises(RouteError) as caught:
        resolve(method, path)
    assert caught.value.status == status


def test_handlers_are_jupyter_api_handlers() -> None:
    """APIHandler brings login, XSRF checks for cookie logins and JSON errors."""
    assert issubclass(ProxyHandler, APIHandler)
    assert issubclass(ConfigHandler, APIHandler)


def test_the_shipped_config_enables_the_extension() -> None:
    config_file = REPO / "jupyter-config/jupyter_server_config.d/jupyter_extension.json"
    assert json.loads(config_file.read_text()) == {
        "ServerApp": {"jpserver_extensions": {"jupyter_extension": True}}
    }
    # Installed into <prefix>/etc/jupyter/jupyter_server_config.d by the wheel's data files.
    pyproject = (REPO / "pyproject.toml").read_text()
    data_files = pyproject.split("[tool.setuptools.data-files]", 1)[1].split("\n[", 1)[0]
    assert '"etc/jupyter/jupyter_server_config.d"' in data_files
    assert f'"{config_file.relative_to(REPO)}"' in data_files
    assert jupyter_extension._jupyter_server_extension_points() == [
        {"module": "jupyter_extension.serverext"}
    ]


# -- against the live service ---------------------------------------------------------------


async def test_config_has_no_token(jp_fetch: Fetch, hub_service: LiveService) -> None:
    response = await call(jp_fetch, "hubserve/config")
    assert response.code == 200
    config = body(response)
    assert config["service_url"] == hub_service.url
    assert config["configured"] is True
    assert config["reason"] is None
    assert config["user"] is None  # outside a hub
    assert config["version"]
    assert ALICE_TOKEN not in response.body.decode()


async def test_me(jp_fetch: Fetch) -> None:
    response = await call(jp_fetch, "hubserve/api/me")
    assert response.code == 200, response.body
    assert body(response)["name"] == "alice"


async def test_upload_deploy_call_delete(jp_fetch: Fetch, iris_archive: Path) -> None:
    """The Lab panel's whole round: push, list, deploy, wait, try it, logs, delete."""
    response = await call(
        jp_fetch,
        "hubserve/api/models",
        "POST",
        body=iris_archive.read_bytes(),
        headers={"Content-Type": "application/gzip"},
    )
    assert response.code in (200, 201), response.body
    version = body(response)["version"]
    assert response.headers["Location"].endswith(
        f"/hubserve/api/models/alice/iris/versions/{version}"
    )
    assert response.headers["Location"].startswith("/a%40b/")  # the server's base URL

    listed = body(await call(jp_fetch, "hubserve/api/models"))
    assert "iris" in [m["name"] for m in listed]
    model = body(await call(jp_fetch, "hubserve/api/models/alice/iris"))
    assert model["tags"]["latest"] == version
    download = await call(jp_fetch, f"hubserve/api/models/alice/iris/versions/{version}/download")
    assert download.code == 200
    assert download.body == iris_archive.read_bytes()
    assert download.headers["Content-Type"] == "application/gzip"
    assert "attachment" in download.headers["Content-Disposition"]

    response = await call(
        jp_fetch, "hubserve/api/deployments", "POST", {"model": "iris", "replicas": 1}
    )
    assert response.code == 201, response.body
    try:
        deadline = asyncio.get_running_loop().time() + READY_TIMEOUT
        while True:
            info = body(await call(jp_fetch, "hubserve/api/deployments/alice/iris"))
            if info["status"]["phase"] == "ready":
                break
            assert asyncio.get_running_loop().time() < deadline, info["status"]
            await asyncio.sleep(0.2)

        response = await call(jp_fetch, "hubserve/d/alice/iris/classify", "POST", SETOSA)
        assert response.code == 200, response.body
        assert body(response) == ["setosa"]

        logs = await call(jp_fetch, "hubserve/api/deployments/alice/iris/logs")
        assert logs.code == 200, logs.body
        listed = body(await call(jp_fetch, "hubserve/api/deployments"))
        assert [d["name"] for d in listed] == ["iris"]
    finally:
        response = await call(jp_fetch, "hubserve/api/deployments/alice/iris", "DELETE")
    assert response.code == 204, response.body
    response = await call(jp_fetch, "hubserve/api/deployments/alice/iris")
    assert_error(response, 404, "alice/iris")
    response = await call(jp_fetch, "hubserve/api/models/alice/iris", "DELETE")
    assert response.code == 204, response.body


async def test_chunked_upload_streams_through(jp_fetch: Fetch, iris_archive: Path) -> None:
    """An upload of unknown length (chunked) is streamed, chunk by chunk, to the service."""
    data = iris_archive.read_bytes()

    async def produce(write: Callable[[bytes], Awaitable[None]]) -> None:
        for start in range(0, len(data), 4096):
            await write(data[start : start + 4096])

    response = await call(
        jp_fetch,
        "hubserve/api/models",
        "POST",
        body_producer=produce,
        headers={"Content-Type": "application/gzip"},
    )
    assert response.code in (200, 201), response.body
    assert body(response)["name"] == "iris"
    response = await call(jp_fetch, "hubserve/api/models/alice/iris", "DELETE")
    assert response.code == 204, response.body


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_the_services_upload_limit_passes_through(jp_fetch: Fetch, chunked: bool) -> None:
    """Above the service's limit: its 413, whether it refuses up front or midway."""
    data = b"x" * (MAX_UPLOAD_BYTES + 1024 * 1024)
    kwargs: dict[str, Any] = {"body": data}
    if chunked:

        async def produce(write: Callable[[bytes], Awaitable[None]]) -> None:
            for start in range(0, len(data), 65536):
                await write(data[start : start + 65536])

        kwargs = {"body_producer": produce}
    response = await call(
        jp_fetch,
        "hubserve/api/models",
        "POST",
        headers={"Content-Type": "application/gzip"},
        **kwargs,
    )
    assert_error(response, 413, f"larger than {MAX_UPLOAD_BYTES} bytes")


async def test_service_errors_pass_through(jp_fetch: Fetch) -> None:
    response = await call(jp_fetch, "hubserve/api/deployments/alice/nothing")
    assert_error(response, 404, "alice/nothing")
    response = await call(jp_fetch, "hubserve/api/deployments", "POST", {"model": "no-such"})
    assert response.code in (404, 422), response.body
    assert "detail" in body(response)
    response = await call(jp_fetch, "hubserve/api/models", "POST", body=b"not a bundle", headers={})
    assert 400 <= response.code < 500 and "detail" in body(response)


async def test_paths_outside_the_allowlist(jp_fetch: Fetch) -> None:
    assert_error(await call(jp_fetch, "hubserve/api/openapi.json"), 404, "not an endpoint")
    response = await call(jp_fetch, "hubserve/api/me", "DELETE")
    assert_error(response, 405, "DELETE")
    assert response.headers["Allow"] == "GET"
    response = await call(jp_fetch, "hubserve/d/alice/iris/../../../api/me")
    assert response.code == 404


async def test_unauthenticated_requests_are_refused(http_server_client: Any) -> None:
    for method, path, payload in [
        ("GET", "hubserve/config", None),
        ("GET", "hubserve/api/me", None),
        ("POST", "hubserve/api/deployments", b"{}"),
    ]:
        response = await http_server_client.fetch(
            f"/a%40b/{path}", method=method, body=payload, raise_error=False
        )
        assert response.code == 403, (path, response.code)
        assert ALICE_TOKEN not in response.body.decode()


async def test_cookie_login_needs_xsrf(jp_fetch: Fetch, http_server_client: Any) -> None:
    """A browser session (cookie) must send the XSRF token with every POST."""
    response = await jp_fetch("hubserve", "config")
    cookies = [value.split(";", 1)[0] for value in response.headers.get_list("Set-Cookie")]
    login = "; ".join(c for c in cookies if c.startswith("username-"))
    assert login, cookies
    no_token = {"Authorization": ""}

    response = await call(jp_fetch, "hubserve/api/me", headers={**no_token, "Cookie": login})
    assert response.code == 200, response.body  # cookie login works for reads

    response = await call(
        jp_fetch,
        "hubserve/api/deployments",
        "POST",
        {"model": "iris"},
        headers={**no_token, "Cookie": login},
    )
    assert_error(response, 403, "_xsrf")

    xsrf = "2|00000000|" + "ab" * 16 + "|1"
    response = await call(
        jp_fetch,
        "hubserve/api/deployments",
        "POST",
        {"model": "no-such-model"},
        headers={**no_token, "Cookie": f"{login}; _xsrf={xsrf}", "X-XSRFToken": xsrf},
    )
    assert response.code != 403, response.body  # past Jupyter: the service's own answer
    assert "detail" in body(response)


class TestServiceDown:
    @pytest.fixture
    def hubserve_config(self) -> dict[str, Any]:
        return {"service_url": f"http://127.0.0.1:{free_port()}/services/hubserve/", "token": "t"}

    async def test_unreachable_service_is_a_clean_503(self, jp_fetch: Fetch) -> None:
        response = await call(jp_fetch, "hubserve/api/me")
        assert_error(response, 503, "cannot be reached")
        response = await call(jp_fetch, "hubserve/api/models", "POST", body=b"x" * 100_000)
        assert_error(response, 503, "cannot be reached")
        assert body(await call(jp_fetch, "hubserve/config"))["configured"] is True


class TestBadToken:
    @pytest.fixture
    def hubserve_config(self, hub_service: LiveService) -> dict[str, Any]:
        return {"service_url": hub_service.url, "token": "not-a-token"}

    async def test_the_services_401_passes_through(
        self, jp_fetch: Fetch, hub_service: LiveService
    ) -> None:
        direct = httpx.get(f"{hub_service.url}api/me", headers=hub_service.headers("not-a-token"))
        response = await call(jp_fetch, "hubserve/api/me")
        assert_error(response, 401)
        assert body(response) == direct.json()
        assert "not-a-token" not in response.body.decode()


class TestNotConfigured:
    @pytest.fixture
    def hubserve_config(self) -> dict[str, Any]:
        return {}

    async def test_config_says_why(self, jp_fetch: Fetch) -> None:
        config = body(await call(jp_fetch, "hubserve/config"))
        assert config["configured"] is False
        assert "not configured" in config["reason"]
        assert config["service_url"] is None
        assert_error(await call(jp_fetch, "hubserve/api/me"), 503, "not configured")


class TestInsideAHub:
    """Configured only by the environment a JupyterHub spawner gives a single-user server."""

    @pytest.fixture
    def hubserve_config(
        self, hub_service: LiveService, monkeypatch: pytest.MonkeyPatch
    ) -> dict[str, Any]:
        monkeypatch.setenv("HUBSERVE_URL", hub_service.url)
        monkeypatch.setenv("JUPYTERHUB_API_TOKEN", ALICE_TOKEN)
        monkeypatch.setenv("JUPYTERHUB_USER", "alice")
        monkeypatch.setenv("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:1/user/alice/")
        return {}

    async def test_environment_configures_the_extension(
        self, jp_fetch: Fetch, hub_service: LiveService
    ) -> None:
        response = await call(jp_fetch, "hubserve/config")
        config = body(response)
        assert config["user"] == "alice"
        assert config["configured"] is True
        assert config["service_url"] == hub_service.url
        assert ALICE_TOKEN not in response.body.decode()
        assert body(await call(jp_fetch, "hubserve/api/me"))["name"] == "alice"


# -- what exactly goes through: an echoing upstream -------------------------------------------


class TestForwarding:
    @pytest.fixture
    def upstream(self, echo_upstream: EchoUpstream) -> tuple[str, list[dict[str, Any]]]:
        return echo_upstream.url, echo_upstream.seen

    @pytest.fixture
    def hubserve_config(self, upstream: tuple[str, list[dict[str, Any]]]) -> dict[str, Any]:
        return {
            "service_url": upstream[0],
            "token": UPSTREAM_TOKEN,
            "max_body_size": 1_000_000,
            # Every forwarding test of the class runs under it, not only the slow one: long
            # enough that a busy CI machine never turns a normal call into a 504.
            "timeout": 2.0,
        }

    @pytest.fixture
    def jp_server_config(self, jp_server_config: Any) -> Any:
        jp_server_config.ServerApp.max_body_size = 10_000  # the extension lifts it for its routes
        return jp_server_config

    async def test_only_what_the_service_needs_is_forwarded(
        self, jp_fetch: Fetch, jp_serverapp: Any, upstream: tuple[str, list[dict[str, Any]]]
    ) -> None:
        jupyter_token = jp_serverapp.identity_provider.token
        response = await call(
            jp_fetch,
            "hubserve/d/alice/echo/predict",
            "POST",
            body=b"a,b\n1,2\n",
            params={"token": jupyter_token, "format": "csv", "_xsrf": "x"},
            headers={
                "Content-Type": "text/csv",
                "Accept": "text/csv",
                "Cookie": "username-x=secret-cookie",
                "X-Custom": "stays here",
            },
        )
        assert response.code == 200, response.body
        assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
        assert response.body == b"size,8\n"
        (seen,) = upstream[1]
        assert seen["method"] == "POST"
        assert seen["path"] == "/services/hubserve/d/alice/echo/predict"
        assert seen["query"] == "format=csv"
        headers = {k.lower(): v for k, v in seen["headers"].items()}
        assert headers["authorization"] == f"token {UPSTREAM_TOKEN}"
        assert headers["content-type"] == "text/csv"
        assert headers["accept"] == "text/csv"
        assert "cookie" not in headers
        assert "x-custom" not in headers
        assert jupyter_token not in json.dumps(seen)
        assert UPSTREAM_TOKEN not in response.body.decode()
        assert UPSTREAM_TOKEN not in str(response.headers)

    async def test_status_and_useful_headers_are_relayed(self, jp_fetch: Fetch) -> None:
        response = await call(jp_fetch, "hubserve/d/alice/echo/teapot")
        assert response.code == 418
        assert response.headers["Content-Type"] == "application/problem+json"
        assert body(response) == {"detail": "short and stout"}
        assert response.headers["Retry-After"] == "7"
        assert response.headers["Location"] == "/a%40b/hubserve/api/deployments/alice/pot?x=1"
        assert "upstream=1" not in str(response.headers.get_list("Set-Cookie"))

    async def test_large_bodies_stream_up_to_the_extensions_limit(
        self, jp_fetch: Fetch, upstream: tuple[str, list[dict[str, Any]]]
    ) -> None:
        data = b"x" * 300_000  # above ServerApp.max_body_size, below max_body_size
        response = await call(jp_fetch, "hubserve/d/alice/echo/put", "PUT", body=data)
        assert response.code == 200, response.body
        assert upstream[1][-1]["size"] == len(data)
        response = await call(jp_fetch, "hubserve/d/alice/echo/put", "PUT", body=data * 4)
        assert_error(response, 413, "larger than 1000000")

    async def test_a_slow_service_is_a_clean_504(self, jp_fetch: Fetch) -> None:
        response = await call(jp_fetch, "hubserve/d/alice/echo/slow")
        assert_error(response, 504, "did not answer within 2 s")

    async def test_a_broken_connection_is_a_clean_502(self, jp_fetch: Fetch) -> None:
        response = await call(jp_fetch, "hubserve/d/alice/echo/hangup")
        assert_error(response, 502, "failed")
