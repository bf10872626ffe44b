"""Auth of the hub service against a real JupyterHub, through the hub's proxy: who a token
is (name, admin flag, groups, scopes) and the browser login. Which credential may use which
route is ``test_auth_matrix.py``."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

import httpx

from .conftest import ADMIN_USER, PASSWORD, Hub

ACCESS = "access:services!service=hubserve"


def me(hub: Hub, token: str | None = None, **headers: str) -> httpx.Response:
    if token is not None:
        headers["Authorization"] = f"token {token}"
    return httpx.get(f"{hub.service_url}/api/me", headers=headers)


def test_user_token_identifies_user_and_groups(hub: Hub) -> None:
    user = hub.create_user()
    hub.add_to_group("hubserve-testers", user)
    token, _ = hub.create_token(user)
    response = me(hub, token)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == user
    assert body["admin"] is False
    assert body["groups"] == ["hubserve-testers"]
    assert ACCESS in body["scopes"]
    assert token not in response.text


def test_narrow_token_with_only_the_access_scope(hub: Hub) -> None:
    user = hub.create_user()
    token, _ = hub.create_token(user, scopes=[ACCESS])
    response = me(hub, token)
    assert response.status_code == 200, response.text
    assert response.json()["name"] == user


def test_admin_is_flagged(hub: Hub) -> None:
    admin = ADMIN_USER  # admin_users in the hub config
    token, _ = hub.create_token(admin)
    response = me(hub, token)
    assert response.status_code == 200, response.text
    assert response.json()["admin"] is True
    # The admin flag alone grants nothing: a restricted admin token is refused.
    narrow, _ = hub.create_token(admin, scopes=[f"read:users:name!user={admin}"])
    assert me(hub, narrow).status_code == 403


# -- browser login (OAuth with PKCE) ---------------------------------------------------------


def _go(client: httpx.Client, response: httpx.Response) -> httpx.Response:
    assert response.status_code in (302, 303), (response.status_code, response.text)
    return client.get(urljoin(str(response.url), response.headers["location"]))


def _hub_login(client: httpx.Client, login_page: httpx.Response, user: str) -> httpx.Response:
    match = re.search(r'name="_xsrf"[^>]*value="([^"]+)"', login_page.text)
    assert match, login_page.text
    return client.post(
        str(login_page.url),
        data={"username": user, "password": PASSWORD, "_xsrf": match.group(1)},
    )


def test_browser_login_through_the_hub(hub: Hub) -> None:
    user = hub.create_user("browser")
    html = {"Accept": "text/html"}
    with httpx.Client(headers=html, timeout=10) as browser:
        start = browser.get(f"{hub.service_url}/api/me")
        assert start.status_code == 302
        authorize = urlsplit(start.headers["location"])
        assert authorize.path == "/hub/api/oauth2/authorize"
        assert "code_challenge_method=S256" in authorize.query

        to_login = _go(browser, start)  # not logged in at the hub yet
        login_page = _go(browser, to_login)
        assert urlsplit(str(login_page.url)).path == "/hub/login"
        back_to_authorize = _hub_login(browser, login_page, user)
        to_callback = _go(browser, back_to_authorize)
        assert urlsplit(to_callback.headers["location"]).path == (
            "/services/hubserve/oauth_callback"
        )
        to_me = _go(browser, to_callback)
        assert to_me.headers["location"] == "/services/hubserve/api/me"
        assert "hubserve-session" in browser.cookies

        page = _go(browser, to_me)
        assert page.status_code == 200, page.text
        assert page.json()["name"] == user
        assert page.json()["admin"] is False

        # The session also serves API calls; without it, API clients get 401, not a redirect.
        api = browser.get(f"{hub.service_url}/api/me", headers={"Accept": "application/json"})
        assert api.status_code == 200
        browser.cookies.clear()
        assert (
            browser.get(
                f"{hub.service_url}/api/me", headers={"Accept": "application/json"}
            ).status_code
            == 401
        )


def test_callback_rejects_a_foreign_state(hub: Hub) -> None:
    with httpx.Client(timeout=10) as browser:
        start = browser.get(f"{hub.service_url}/login")
        assert start.status_code == 302
        response = browser.get(
            f"{hub.service_url}/oauth_callback", params={"code": "x" * 20, "state": "forged"}
        )
        assert response.status_code == 400
        fresh = httpx.get(f"{hub.service_url}/oauth_callback", params={"code": "x", "state": "y"})
        assert fresh.status_code == 400


def test_forged_session_cookie_is_401(hub: Hub) -> None:
    response = httpx.get(f"{hub.service_url}/api/me", cookies={"hubserve-session": "gAAAAABforged"})
    assert response.status_code == 401
