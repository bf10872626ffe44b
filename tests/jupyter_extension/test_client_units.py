"""The client without a hub: discovery, argument checks, and answers the real service does not
give on demand (proxy error pages, a failing deployment, a job that never ends), served by
``httpx.MockTransport``. Everything else is tested against the live hub in ``test_client.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest

from jupyter_extension.client import (
    AsyncClient,
    Client,
    ConfigurationError,
    DeploymentFailed,
    Forbidden,
    HubserveClientError,
    HubserveTimeout,
    InvalidRequest,
    ServerError,
    ServiceUnavailable,
    _operations,
)

URL = "http://hub.test/services/hubserve/"
TOKEN = "secret-token-0123456789"
NOW = datetime(2026, 11, 25, tzinfo=timezone.utc).isoformat()

Handler = Callable[[httpx.Request], httpx.Response]
JOB: dict[str, Any] = {
    "id": "abc",
    "api": "negate",
    "input": "/in",
    "output": "/out",
    "state": "queued",
    "items_total": 4,
    "created_at": NOW,
}


def _client(handler: Handler) -> Client:
    return Client(URL, TOKEN, transport=httpx.MockTransport(handler))


def _deployment(phase: str, *, ready: int = 0, message: str | None = None) -> dict[str, Any]:
    return {
        "owner": "alice",
        "name": "iris",
        "model": "alice/iris",
        "version": "20261125T000000000Z-00000000",
        "selector": "latest",
        "url": "/services/hubserve/d/alice/iris/",
        "replicas": 1,
        "generation": 1,
        "created_by": "alice",
        "created_at": NOW,
        "updated_at": NOW,
        "status": {
            "desired": 1,
            "ready": ready,
            "updated": ready,
            "phase": phase,
            "message": message,
        },
    }


@pytest.fixture
def fast_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_operations, "POLL_SECONDS", 0.0)
    monkeypatch.setattr(_operations, "JOB_POLL_SECONDS", 0.0)
    monkeypatch.setattr(_operations, "FAILED_GRACE_SECONDS", 0.05)


# -- discovery ------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("HUBSERVE_URL", "JUPYTERHUB_API_URL", "JUPYTERHUB_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_discovery_precedence(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("JUPYTERHUB_API_TOKEN", "env-token")
    clean_env.setenv("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")
    assert Client().url == "http://127.0.0.1:8081/services/hubserve/"
    clean_env.setenv("HUBSERVE_URL", "https://hub.example.org/services/hubserve")
    assert Client().url == "https://hub.example.org/services/hubserve/"
    assert Client("http://other:9000/prefix").url == "http://other:9000/prefix/"


def test_discovery_errors(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"cannot find the hubserve service: set HUBSERVE_URL or pass url=",
    ):
        Client(token=TOKEN)
    with pytest.raises(ConfigurationError, match="no hub token"):
        Client(URL)
    clean_env.setenv("JUPYTERHUB_API_URL", "http://hub:8081/somewhere")
    with pytest.raises(ConfigurationError, match="set HUBSERVE_URL"):
        Client(token=TOKEN)
    with pytest.raises(ConfigurationError, match="must be http"):
        Client("ftp://hub/services/hubserve/", TOKEN)
    with pytest.raises(ConfigurationError, match="control characters") as caught:
        Client(URL, "bad token\n")
    assert "bad token" not in str(caught.value)


def test_names_are_checked_before_sending() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"nothing should be sent, got {request.url}")

    with _client(refuse) as client:
        for bad in ("a/b/c", "", "/iris", "iris:", "al ice/iris"):
            with pytest.raises(InvalidRequest):
                client.deployment(bad)
        with pytest.raises(InvalidRequest, match="is not a deployment name"):
            client.deployment("alice/iris:v1")


# -- answers the live service does not give on demand ---------------------------------------


def test_a_proxy_error_page_is_a_clean_one_line_error() -> None:
    page = f"<html><body><h1>502</h1><pre>{TOKEN}\nbad gateway</pre></body></html>"
    with (
        _client(lambda _: httpx.Response(502, html=page)) as client,
        pytest.raises(ServerError) as caught,
    ):
        client.models()
    error = caught.value
    assert error.status == 502
    assert str(error) == (
        "HTTP 502 Bad Gateway from /services/hubserve/api/models"
        " (not an answer of the hubserve service)"
    )


def test_the_token_never_reaches_a_message() -> None:
    echo = httpx.Response(400, text=f"bad header Authorization: token {TOKEN}")
    with _client(lambda _: echo) as client, pytest.raises(InvalidRequest) as caught:
        client.me()
    assert TOKEN not in str(caught.value) and TOKEN not in repr(caught.value)
    assert "***" in caught.value.message


def test_a_multiline_detail_prints_on_one_line() -> None:
    answer = httpx.Response(403, json={"detail": "no access\n  to hubserve"})
    with _client(lambda _: answer) as client, pytest.raises(Forbidden) as caught:
        client.me()
    assert caught.value.message == "no access\n  to hubserve"
    assert str(caught.value) == "no access to hubserve"


def test_503_carries_retry_after() -> None:
    busy = httpx.Response(
        503,
        json={"detail": "deployment alice/iris has no ready replica"},
        headers={"Retry-After": "1"},
    )
    with _client(lambda _: busy) as client, pytest.raises(ServiceUnavailable) as caught:
        client.predict("alice/iris", "predict", [[1.0]])
    assert caught.value.retry_after == 1.0 and caught.value.status == 503


def test_an_unexpected_answer_is_a_server_error() -> None:
    with (
        _client(lambda _: httpx.Response(200, json={"name": 3})) as client,
        pytest.raises(ServerError, match="unexpected answer to GET api/me"),
    ):
        client.me()


def test_a_deployment_that_stays_failed_raises(fast_polling: None) -> None:
    failing = _deployment("failed", message="ImportError: no module named 'sklearn'")
    with (
        _client(lambda _: httpx.Response(200, json=failing)) as client,
        pytest.raises(DeploymentFailed) as caught,
    ):
        client.wait_ready("alice/iris", timeout=30)
    assert (
        str(caught.value) == "deployment alice/iris failed: ImportError: no module named 'sklearn'"
    )
    assert caught.value.deployment is not None
    assert caught.value.deployment.status.phase == "failed"


def test_a_brief_failure_is_waited_out(fast_polling: None) -> None:
    answers = iter(
        [_deployment("failed"), _deployment("progressing"), _deployment("ready", ready=1)]
    )
    with _client(lambda _: httpx.Response(200, json=next(answers))) as client:
        assert client.wait_ready("alice/iris", timeout=30).status.settled


def test_waiting_times_out(fast_polling: None) -> None:
    slow = _deployment("progressing", message="pulling the bundle")
    with (
        _client(lambda _: httpx.Response(200, json=slow)) as client,
        pytest.raises(HubserveTimeout, match=r"not ready after 0\.05 s") as caught,
    ):
        client.wait_ready("alice/iris", timeout=0.05)
    assert isinstance(caught.value, TimeoutError)
    assert "pulling the bundle" in str(caught.value)


def test_a_job_that_never_ends_times_out(fast_polling: None) -> None:
    job = {**JOB, "state": "running", "items_done": 1}
    seen: list[str] = []
    with (
        _client(lambda _: httpx.Response(200, json=job)) as client,
        pytest.raises(HubserveTimeout, match="job abc not finished"),
    ):
        client.wait_job("alice/iris", "abc", timeout=0.05, progress=lambda j: seen.append(j.id))
    assert seen and set(seen) == {"abc"}


def _paging_runtime(items: list[dict[str, Any]], sent: list[str]) -> Handler:
    """A runtime's job status route whose job processes four more items at every request,
    and answers pages as the runtime does; ``sent`` records every item it answers."""
    done = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal done
        done = min(done + 4, len(items))
        start, limit = (int(request.url.params[name]) for name in ("items_from", "items_limit"))
        page = items[start : min(start + limit, done)]
        sent.extend(item["item"] for item in page)
        state = "succeeded" if done == len(items) else "running"
        body = {**JOB, "state": state, "items_done": done, "items": page, "items_from": start}
        return httpx.Response(200, json=body)

    return answer


def test_waiting_for_a_job_fetches_each_item_once(
    fast_polling: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages smaller than what each poll brings, and the job ends while the client is still
    behind: it pages on until it has everything, and receives every item once."""
    monkeypatch.setattr(_operations, "JOB_ITEMS_PAGE", 3)
    items = [{"item": f"{n:02}.fits", "ok": True, "seconds": 0.1} for n in range(10)]
    names = [item["item"] for item in items]
    sent: list[str] = []
    seen: list[int] = []
    with _client(_paging_runtime(items, sent)) as client:
        job = client.wait_job("alice/iris", "abc", progress=lambda j: seen.append(len(j.items)))
    assert [item.item for item in job.items] == names and sent == names
    assert (job.state, job.items_from) == ("succeeded", 0)
    assert seen == sorted(seen) and seen[-1] == len(names)

    async def scenario() -> list[str]:
        transport = httpx.MockTransport(_paging_runtime(items, sent))
        async with AsyncClient(URL, TOKEN, transport=transport) as client:
            return [item.item for item in (await client.job("alice/iris", "abc")).items]

    sent.clear()  # one call pages until it has caught up with the job, which went on meanwhile
    assert asyncio.run(scenario()) == names and sent == names


def test_a_runtime_without_pages_still_gives_every_item_once(fast_polling: None) -> None:
    """An older runtime ignores the page parameters and answers every item each time."""
    items = [{"item": f"{n}.fits", "ok": True} for n in range(4)]
    answers = iter(
        [
            {**JOB, "state": "running", "items_done": 2, "items": items[:2]},
            {**JOB, "state": "succeeded", "items_done": 4, "items": items},
        ]
    )
    with _client(lambda _: httpx.Response(200, json=next(answers))) as client:
        job = client.wait_job("alice/iris", "abc", progress=False)
    assert [item.item for item in job.items] == [item["item"] for item in items]


def test_async_client_maps_errors_the_same_way() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"token {TOKEN}"
        return httpx.Response(422, json={"detail": [{"loc": ["body", "replicas"], "msg": "bad"}]})

    async def scenario() -> HubserveClientError:
        async with AsyncClient(URL, TOKEN, transport=httpx.MockTransport(answer)) as client:
            with pytest.raises(InvalidRequest) as caught:
                await client.deploy("alice/iris", replicas=-1)
            return caught.value

    error = asyncio.run(scenario())
    assert str(error) == "body.replicas: bad" and error.status == 422


def test_wait_job_draws_a_progress_bar(
    fast_polling: None, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter(
        [
            {**JOB, "state": "running", "items_done": 1},
            {**JOB, "state": "succeeded", "items_done": 4, "progress": 1.0},
        ]
    )
    with _client(lambda _: httpx.Response(200, json=next(answers))) as client:
        job = client.wait_job("alice/iris", "abc")
    assert job.finished and job.state == "succeeded"
    bar = capsys.readouterr().err
    assert "job abc" in bar and "4/4" in bar
