"""Every handler of the server extension requires a logged-in Jupyter user.

Two checks, as the JupyterLab extension template's ``check_auth`` does and then some: each
HTTP verb the extension's handlers define is wrapped by ``tornado.web.authenticated``
(statically, so a new handler or verb cannot forget it), and each route, called on a running
Lab without credentials, with a wrong token, or with the login cookie but no XSRF token for
a write, is refused before anything reaches the hub service.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from tornado import web

from jupyter_extension.serverext.handlers import AUTH_RESOURCE, default_handlers

from .conftest import ALICE_TOKEN, LabServer, LiveService

VERBS = ("get", "head", "post", "put", "patch", "delete", "options")
_AUTHENTICATED_CODE = web.authenticated(lambda self: None).__code__  # tornado's wrapper

# One request per route and method the extension forwards (and one it does not).
REQUESTS = [
    ("GET", "hubserve/config"),
    ("GET", "hubserve/api/me"),
    ("GET", "hubserve/api/models"),
    ("POST", "hubserve/api/models"),
    ("GET", "hubserve/api/models/alice/iris"),
    ("DELETE", "hubserve/api/models/alice/iris"),
    ("GET", "hubserve/api/models/alice/iris/versions/latest"),
    ("GET", "hubserve/api/models/alice/iris/versions/latest/download"),
    ("PUT", "hubserve/api/models/alice/iris/tags/stolen"),
    ("GET", "hubserve/api/deployments"),
    ("POST", "hubserve/api/deployments"),
    ("GET", "hubserve/api/deployments/alice/iris"),
    ("PATCH", "hubserve/api/deployments/alice/iris"),
    ("DELETE", "hubserve/api/deployments/alice/iris"),
    ("GET", "hubserve/api/deployments/alice/iris/logs"),
    ("GET", "hubserve/d/alice/iris/v2/models/iris"),
    ("POST", "hubserve/d/alice/iris/predict"),
    ("GET", "hubserve/api/not-an-endpoint"),
]
DEPLOY = {"model": "iris", "name": "intruder"}


def own_verbs(handler: type) -> dict[str, Callable[..., Any]]:
    """The HTTP verb methods that the extension's code (not jupyter_server) defines."""
    found = {}
    for verb in VERBS:
        owner = next((cls for cls in handler.__mro__ if verb in vars(cls)), None)
        if owner is not None and owner.__module__.startswith("jupyter_extension."):
            found[verb] = vars(owner)[verb]
    return found


@pytest.mark.parametrize(
    ("pattern", "handler"), default_handlers("/"), ids=lambda value: getattr(value, "__name__", "")
)
def test_every_verb_is_authenticated(pattern: str, handler: type) -> None:
    assert pattern.startswith("/hubserve/")
    assert handler.auth_resource == AUTH_RESOURCE  # type: ignore[attr-defined]
    verbs = own_verbs(handler)
    assert verbs, f"{handler.__name__} defines no HTTP verb"
    for verb, method in verbs.items():
        assert method.__code__ is _AUTHENTICATED_CODE, (
            f"{handler.__name__}.{verb} is not wrapped by tornado.web.authenticated"
        )


def test_the_routes_cover_config_api_and_gateway() -> None:
    patterns = [pattern for pattern, _ in default_handlers("/base/")]
    assert patterns == ["/base/hubserve/config", "/base/hubserve/(?:api|d)/.*"]


def refused(response: httpx.Response) -> None:
    assert response.status_code in (401, 403), (response.status_code, response.text)
    assert "alice" not in response.text  # nothing of the service's answer leaks through


@pytest.mark.parametrize(
    "credentials",
    [
        {},
        {"headers": {"Authorization": "token not-the-lab-token"}},
        {"params": {"token": "not-the-lab-token"}},
        {"headers": {"Authorization": f"token {ALICE_TOKEN}"}},  # the service's, not Lab's
    ],
    ids=["anonymous", "wrong-token-header", "wrong-token-query", "service-token"],
)
def test_a_running_lab_refuses_unauthenticated_calls(
    lab: LabServer,
    hub_service: LiveService,
    iris_versions: list[str],
    credentials: dict[str, Any],
) -> None:
    for method, path in REQUESTS:
        json_body = DEPLOY if method in ("POST", "PATCH") else None
        # A connection per request: the server answers a refused write without reading its
        # body, then drops the connection, which a pooled client may be about to reuse.
        refused(httpx.request(method, lab.url + path, json=json_body, timeout=30, **credentials))
    # The positive control: the same server answers its own token.
    allowed = httpx.get(
        lab.url + "hubserve/api/models",
        headers={"Authorization": f"token {lab.token}"},
        timeout=30,
    )
    assert allowed.status_code == 200, allowed.text
    # Nothing reached the service.
    assert hub_service.call("GET", "api/models/alice/iris").status_code == 200
    assert hub_service.call("GET", "api/deployments").json() == []
    tags = hub_service.call("GET", "api/models/alice/iris").json()["tags"]
    assert "stolen" not in tags


def test_a_cookie_login_needs_the_xsrf_token_to_write(
    lab: LabServer, hub_service: LiveService, iris_versions: list[str]
) -> None:
    """The browser's way in (the login cookie) cannot be used cross-site for writes."""
    with httpx.Client(base_url=lab.url, timeout=30) as client:
        login = client.get("lab", params={"token": lab.token})
        assert login.status_code == 200
        assert client.get("hubserve/config").status_code == 200  # the cookie logs in
        refused(client.post("hubserve/api/deployments", json=DEPLOY))
    with httpx.Client(base_url=lab.url, timeout=30, cookies=client.cookies) as client:
        refused(client.put("hubserve/api/models/alice/iris/tags/stolen"))
    assert hub_service.call("GET", "api/deployments").json() == []
    assert "stolen" not in hub_service.call("GET", "api/models/alice/iris").json()["tags"]
