"""The hub goes away while the service runs: the outage grace of :class:`HubAuthenticator`.

A fake clock and a fake hub (``httpx.MockTransport``, switched between answering and
refusing connections) drive the authenticator through an outage: tokens the hub accepted
recently keep working, new ones get the 503, the grace is bounded and never extended, and
tokens revoked during the outage are refused once the hub is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from hub_service._settings import HubServiceSettings
from hub_service.auth import OUTAGE_RECHECK, HubAuthenticator, HubUnavailable, TokenRejected

ACCESS = "access:services!service=hubserve"
ALICE = "a" * 32
BOB = "b" * 32
CAROL = "c" * 32
POSITIVE_TTL = 60
GRACE = 300


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeHub:
    """Answers ``GET /user`` for the tokens it knows, or refuses connections when down."""

    def __init__(self) -> None:
        self.up = True
        self.users = {ALICE: "alice", BOB: "bob", CAROL: "carol"}
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if not self.up:
            raise httpx.ConnectError("connection refused", request=request)
        token = request.headers["authorization"].removeprefix("token ")
        name = self.users.get(token)
        if name is None:
            return httpx.Response(403, json={"status": 403})
        return httpx.Response(200, json={"kind": "user", "name": name, "scopes": [ACCESS]})


def make_authenticator(hub: FakeHub, clock: Clock, grace: float = GRACE) -> HubAuthenticator:
    settings = HubServiceSettings(
        hub_api_url="http://hub.test/hub/api",
        api_token=SecretStr("service-secret-token"),
        positive_ttl=POSITIVE_TTL,
        negative_ttl=5,
        hub_outage_grace=grace,
    )
    client = httpx.AsyncClient(transport=httpx.MockTransport(hub))
    return HubAuthenticator(settings, client=client, clock=clock)


def run(scenario: Callable[[], Coroutine[Any, Any, None]], auth: HubAuthenticator) -> None:
    async def main() -> None:
        try:
            await scenario()
        finally:
            await auth.aclose()

    asyncio.run(main())


def test_recently_accepted_tokens_survive_an_outage(caplog: pytest.LogCaptureFixture) -> None:
    hub, clock = FakeHub(), Clock()
    auth = make_authenticator(hub, clock)

    async def scenario() -> None:
        assert (await auth.resolve(ALICE)).name == "alice"
        clock.now = 100
        assert (await auth.resolve(BOB)).name == "bob"
        hub.up = False
        clock.now = 200  # both TTLs are over: the hub would be asked, and cannot be
        for _ in range(3):
            assert (await auth.resolve(ALICE)).name == "alice"
            assert (await auth.resolve(BOB)).name == "bob"
        with pytest.raises(HubUnavailable):  # never seen: nothing to fall back on
            await auth.resolve(CAROL)
        clock.now = GRACE  # alice's grace ends 300 s after the hub last accepted her token
        with pytest.raises(HubUnavailable):
            await auth.resolve(ALICE)
        assert (await auth.resolve(BOB)).name == "bob"  # bob's runs until 400
        clock.now = 100 + GRACE
        with pytest.raises(HubUnavailable):
            await auth.resolve(BOB)

    with caplog.at_level(logging.INFO, logger="hub_service.auth"):
        run(scenario, auth)
    outage_lines = [r for r in caplog.records if "accepting tokens it confirmed" in r.message]
    assert len(outage_lines) == 1  # once per outage, not once per request
    assert ALICE not in caplog.text and BOB not in caplog.text


def test_the_grace_is_not_extended_by_use_during_the_outage() -> None:
    hub, clock = FakeHub(), Clock()
    auth = make_authenticator(hub, clock)

    async def scenario() -> None:
        await auth.resolve(ALICE)
        hub.up = False
        for now in range(POSITIVE_TTL, GRACE, 20):  # used all through the outage
            clock.now = now
            assert (await auth.resolve(ALICE)).name == "alice"
        clock.now = GRACE
        with pytest.raises(HubUnavailable):
            await auth.resolve(ALICE)

    run(scenario, auth)


def test_rejected_tokens_get_no_grace() -> None:
    hub, clock = FakeHub(), Clock()
    auth = make_authenticator(hub, clock)

    async def scenario() -> None:
        await auth.resolve(ALICE)
        del hub.users[ALICE]  # revoked while the hub is still up
        clock.now = POSITIVE_TTL
        with pytest.raises(TokenRejected):
            await auth.resolve(ALICE)
        hub.up = False
        clock.now = POSITIVE_TTL + 10  # the short rejection cache is over too
        with pytest.raises(HubUnavailable):
            await auth.resolve(ALICE)

    run(scenario, auth)


def test_revoked_during_the_outage_is_refused_once_the_hub_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub, clock = FakeHub(), Clock()
    auth = make_authenticator(hub, clock)

    async def scenario() -> None:
        await auth.resolve(ALICE)
        await auth.resolve(BOB)
        hub.up = False
        clock.now = 100
        assert (await auth.resolve(ALICE)).name == "alice"
        assert (await auth.resolve(BOB)).name == "bob"
        del hub.users[BOB]  # revoked while the hub was down, seen when it is back
        hub.up = True
        clock.now = 101
        assert (await auth.resolve(ALICE)).name == "alice"  # asked again: accepted, cached
        with pytest.raises(TokenRejected):
            await auth.resolve(BOB)
        calls = hub.calls
        hub.up = False  # a second outage: alice's grace starts over from her new acceptance
        clock.now = 101 + GRACE - 1
        assert (await auth.resolve(ALICE)).name == "alice"
        with pytest.raises(HubUnavailable):  # bob's grace ended with the hub's refusal
            await auth.resolve(BOB)
        assert hub.calls == calls + 1  # the hub was just found out: bob's call did not ask

    with caplog.at_level(logging.INFO, logger="hub_service.auth"):
        run(scenario, auth)
    assert sum("accepting tokens it confirmed" in r.message for r in caplog.records) == 2
    assert sum("answers again" in r.message for r in caplog.records) == 1


def test_the_hub_is_asked_once_a_second_during_an_outage() -> None:
    """A hub that hangs costs one call a second ``hub_timeout``, not every call."""
    hub, clock = FakeHub(), Clock()
    auth = make_authenticator(hub, clock)

    async def scenario() -> None:
        await auth.resolve(ALICE)
        await auth.resolve(BOB)
        hub.up = False
        clock.now = POSITIVE_TTL
        calls = hub.calls
        for _ in range(5):
            assert (await auth.resolve(ALICE)).name == "alice"
            assert (await auth.resolve(BOB)).name == "bob"
            with pytest.raises(HubUnavailable):
                await auth.resolve(CAROL)
        assert hub.calls == calls + 1
        clock.now = POSITIVE_TTL + OUTAGE_RECHECK
        hub.up = True
        assert (await auth.resolve(CAROL)).name == "carol"  # asked again: the hub is back
        assert hub.calls == calls + 2

    run(scenario, auth)


def test_zero_grace_disables_the_fallback() -> None:
    hub, clock = FakeHub(), Clock()
    auth = make_authenticator(hub, clock, grace=0)

    async def scenario() -> None:
        await auth.resolve(ALICE)
        hub.up = False
        assert (await auth.resolve(ALICE)).name == "alice"  # the positive cache, as before
        clock.now = POSITIVE_TTL
        with pytest.raises(HubUnavailable):
            await auth.resolve(ALICE)

    run(scenario, auth)


def test_the_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBSERVE_HUB_OUTAGE_GRACE", "42.5")
    assert HubServiceSettings().hub_outage_grace == 42.5
    assert HubServiceSettings(hub_outage_grace=0).hub_outage_grace == 0
