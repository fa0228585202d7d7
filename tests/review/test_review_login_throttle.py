"""Password guessing at POST /api/login is slowed down: after 5 failures for a user name (or from an address) in
15 minutes, attempts are refused with 429 until the window passes, even with the right password."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from medsight.review.login_throttle import LoginThrottle
from medsight.serving.http_api import create_app
from review.test_review_api import PASSWORD, Site, bundle, site  # noqa: F401  (the configured service)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_throttle_counts_failures_per_user_and_per_address_in_a_sliding_window() -> None:
    clock = _Clock()
    throttle = LoginThrottle(limit=3, window_s=60, clock=clock)
    for _ in range(3):
        assert throttle.retry_after("ann", "10.0.0.1") is None
        throttle.failed("ann", "10.0.0.1")
        clock.now += 1
    assert throttle.retry_after("ann", "10.0.0.9") == 57  # the user name is blocked from any address
    assert throttle.retry_after("bob", "10.0.0.1") == 57  # and the address for any user name
    assert throttle.retry_after("bob", "10.0.0.2") is None
    clock.now += 58
    assert throttle.retry_after("ann", "10.0.0.1") is None  # the oldest failure left the window
    throttle.failed("bob", "10.0.0.3")
    throttle.succeeded("bob")
    assert throttle._failures.get("user:bob") is None and len(throttle._failures["peer:10.0.0.3"]) == 1


def test_login_answers_429_after_five_failures_even_to_the_right_password(site: Site) -> None:  # noqa: F811
    clock = _Clock()
    backend = site.service.review_backend()
    backend.throttle = LoginThrottle(clock=clock)
    client = TestClient(create_app(site.service.store, site.service.users, site.service.audit,
                                   routers=[backend.router]))
    wrong = {"user": "radiologist", "password": "guess"}
    assert [client.post("/api/login", json=wrong).status_code for _ in range(5)] == [401] * 5
    refused = client.post("/api/login", json={"user": "radiologist", "password": PASSWORD})
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "901"
    assert "too many failed log-ins" in refused.json()["detail"]
    clock.now += 901
    assert client.post("/api/login", json={"user": "radiologist", "password": PASSWORD}).status_code == 200
    outcomes: list[Any] = [r["outcome"] for r in site.audit() if r["action"] == "login"]
    assert outcomes.count("429: too many failed log-ins") == 1
