"""The contract's error shape for what the router and the body limit refuse, in both languages."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.integration.daemon import RunningDaemon

pytestmark = pytest.mark.integration


def request(
    daemon: RunningDaemon, method: str, path: str, body: bytes | None, language: str
) -> tuple[int, Any, dict[str, str]]:
    headers = {"Accept-Language": language, "Content-Type": "application/json"}
    call = urllib.request.Request(daemon.url(path), data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(call, timeout=10) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "english", "polish"),
    [
        (
            "GET",
            "/api/v1/nothing",
            None,
            404,
            "not_found",
            "Not found: /api/v1/nothing",
            "Nie znaleziono: /api/v1/nothing",
        ),
        (
            "DELETE",
            "/api/v1/query",
            None,
            405,
            "method_not_allowed",
            "Method DELETE",
            "Metoda DELETE jest tu niedozwolona",
        ),
        ("PUT", "/api/v1/metrics", b"{}", 405, "method_not_allowed", "Method PUT", "Metoda PUT"),
        ("POST", "/api/v1/metrics", b"x" * (4 * 1024 * 1024 + 1), 413, "body_too_large", "larger than", "przekracza"),
        ("POST", "/api/v1/metrics", b"{", 400, "invalid_metric", "Invalid metric", "Nieprawidłowa metryka"),
        ("GET", "/api/v1/query?metric=9x", None, 400, "invalid_metric_name", "Invalid metric", "Nieprawidłowa nazwa"),
        ("GET", "/api/v1/query?metric=a&limit=0", None, 400, "invalid_limit", "limit must", "limit musi być"),
    ],
)
def test_errors_have_one_shape_in_english_and_polish(
    daemon: RunningDaemon,
    method: str,
    path: str,
    body: bytes | None,
    status: int,
    code: str,
    english: str,
    polish: str,
) -> None:
    for language, text in (("en", english), ("pl-PL,pl;q=0.9", polish)):
        got, reply, headers = request(daemon, method, path, body, language)
        assert got == status
        assert set(reply) == {"error"} and set(reply["error"]) == {"code", "message", "details"}
        assert reply["error"]["code"] == code and text in reply["error"]["message"]
        assert headers["Content-Language"] == language[:2]
        assert headers["Content-Type"].startswith("application/json")
    if status == 405:
        assert "GET" in headers["Allow"] or "POST" in headers["Allow"]
