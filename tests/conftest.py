"""Fixtures shared by the whole suite: the real services and the bus backends.

``make test`` starts a Kafka broker and Redis (scripts/services.sh) and exports
``SHARDWORLD_KAFKA_URL`` and ``SHARDWORLD_REDIS_URL``. Without them, tests that need a service
skip with the reason, except under ``CI=true``, where a missing service is a failure.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardworld.bus.memory import forget_memory_bus


def _service_url(variable: str, service: str, example: str) -> str:
    url = os.environ.get(variable, "").strip()
    if url:
        return url
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"CI=true but {variable} is not set: make test starts {service}", pytrace=False)
    pytest.skip(
        f"{variable} is not set: `make test` starts {service}, or run `make services-up` "
        f"and export {variable}={example}"
    )


@pytest.fixture(scope="session")
def kafka_url() -> str:
    """URL of a running Kafka broker, e.g. ``kafka://127.0.0.1:19092``."""
    return _service_url("SHARDWORLD_KAFKA_URL", "Kafka", "kafka://127.0.0.1:19092")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a running Redis, e.g. ``redis://127.0.0.1:16379/0``."""
    return _service_url("SHARDWORLD_REDIS_URL", "Redis", "redis://127.0.0.1:16379/0")


@pytest.fixture(params=["memory", "kafka"])
def bus_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A bus URL per backend: a fresh ``memory://`` name per test, or the Kafka broker.

    Tests that use it must pick unique topic names (e.g. with uuid): the broker is shared by
    every test of the run and may be reused across runs.
    """
    if request.param == "memory":
        name = f"test-{uuid.uuid4().hex}"
        yield f"memory://{name}"
        forget_memory_bus(name)
    else:
        yield request.getfixturevalue("kafka_url")


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A store URL per backend: a fresh ``memory://`` name per test, or the Redis server.

    Tests that use it must pick unique world names (e.g. with uuid): the Redis server is shared
    by every test of the run and may be reused across runs.
    """
    if request.param == "memory":
        from shardworld.store.memory import forget_memory_store

        name = f"test-{uuid.uuid4().hex}"
        yield f"memory://{name}"
        forget_memory_store(name)
    else:
        yield request.getfixturevalue("redis_url")


# Debian's Chromium, driven by Playwright (no browser download: `make browser` installs it).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / ".artifacts"


def chromium_path() -> str:
    """Path of the Chromium binary, or skip (fail under CI=true) when there is none."""
    found = os.environ.get("SHARDWORLD_CHROMIUM") or shutil.which("chromium")
    if found:
        return found
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail("CI=true but chromium is missing: `make browser` installs it", pytrace=False)
    pytest.skip("chromium is not installed: run `make browser` (apt-get install chromium)")


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Chromium (Playwright's sync API); use it from plain ``def`` tests only.

    Screenshots worth keeping go to ``artifacts`` (the repository's ``.artifacts/``).
    """
    path = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def artifacts() -> Path:
    """Folder for test artifacts (screenshots); kept after the run, ignored by git."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
