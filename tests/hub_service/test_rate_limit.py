"""Per-user rate limiting of the gateway: the token buckets, then a live service, low limits."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import httpx
import pytest

from hub_service._rate_limit import RateLimiter, retry_after
from model_runtime import build_bundle
from tests.live_hub import REPO
from tests.standalone_service import StandaloneService, standalone_service

RATE = 0.5
"""Slow enough that the burst and the refused call fit in the refill of one call (2 s, where
an idle machine needs a few hundredths of a second), so a busy CI machine still sees the
429; a faster rate would let a slow call or two refill the bucket before the sixth."""
BURST = 5
TOKENS = {
    "rate-alice-token": {"name": "alice"},
    "rate-alice-second-token": {"name": "alice"},
    "rate-bob-token": {"name": "bob"},
}
READY_TIMEOUT = 60.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_the_burst_then_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.acquire("alice") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("alice") == pytest.approx(0.5)  # one call back in 1/rate s
    assert limiter.acquire("bob") == 0.0  # buckets are per key
    clock.now += 0.5
    assert limiter.acquire("alice") == 0.0
    assert limiter.acquire("alice") > 0
    clock.now += 60
    assert [limiter.acquire("alice") for _ in range(3)] == [0.0, 0.0, 0.0]  # never above burst
    assert limiter.acquire("alice") > 0


def test_idle_buckets_are_forgotten() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=10.0, burst=10, clock=clock)
    for user in range(1000):
        limiter.acquire(f"user-{user}")
    assert len(limiter) == 1000
    clock.now += 1.01  # every bucket is full again: as good as new
    limiter.acquire("alice")
    assert len(limiter) == 1


def test_retry_after_is_whole_seconds() -> None:
    assert retry_after(0.01) == "1"
    assert retry_after(1.0) == "1"
    assert retry_after(1.2) == "2"


def test_limiter_needs_a_positive_rate() -> None:
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(rate=0, burst=1)


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneService]:
    """A service limiting each user to ``RATE``/s, bursts of ``BURST``; iris deployed, public."""
    archive = build_bundle(
        f"{REPO / 'examples/iris/iris.py'}:service",
        output_dir=tmp_path_factory.mktemp("rate-bundle"),
        creator="alice",
    ).archive
    env = {"HUBSERVE_GATEWAY_RATE_LIMIT": str(RATE), "HUBSERVE_GATEWAY_RATE_BURST": str(BURST)}
    with standalone_service(tmp_path_factory.mktemp("rate-service"), TOKENS, env=env) as service:
        pushed = service.call(
            "POST",
            "api/models",
            content=archive.read_bytes(),
            headers={"Content-Type": "application/gzip"},
        )
        assert pushed.status_code == 201, pushed.text
        created = service.call(
            "POST", "api/deployments", json={"model": "iris", "access": {"public": True}}
        )
        assert created.status_code == 201, created.text
        deadline = time.monotonic() + READY_TIMEOUT
        while service.call("GET", "api/deployments/alice/iris").json()["status"]["ready"] < 1:
            assert time.monotonic() < deadline, "iris did not become ready"
            time.sleep(0.2)
        yield service


def test_gateway_answers_429_beyond_the_burst(limited: StandaloneService) -> None:
    url = f"{limited.url}d/alice/iris/predict"
    rows = [[5.1, 3.5, 1.4, 0.2]]

    def predict(token: str) -> httpx.Response:
        return httpx.post(url, json=rows, headers=limited.headers(token), timeout=30)

    answers = [predict("rate-alice-token").status_code for _ in range(BURST)]
    assert answers == [200] * BURST
    # The second token of the same user shares the bucket.
    refused = predict("rate-alice-second-token")
    assert refused.status_code == 429, refused.text
    assert refused.headers["content-type"] == "application/json"
    assert "alice" in refused.json()["detail"]
    assert "rate-alice" not in refused.text
    wait = int(refused.headers["retry-after"])
    assert 1 <= wait <= math.ceil(1 / RATE)  # whole seconds until one call is back
    # Other users are not affected.
    assert predict("rate-bob-token").status_code == 200
    # After Retry-After, alice may call again.
    time.sleep(wait)
    assert predict("rate-alice-token").status_code == 200
    # The API routes are not rate-limited (only the gateway is).
    assert all(limited.call("GET", "api/me").status_code == 200 for _ in range(BURST + 2))
