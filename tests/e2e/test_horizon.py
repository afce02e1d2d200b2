"""OpenStack's dashboard (Horizon, unmodified, from PyPI) in headless Chromium against a
running Loom: a tenant signs in and every page of the project panel opens without an
error. scripts/horizon/run.sh installs and serves Horizon."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.runtime.natsserver import free_port
from tests.e2e.support import wait_for_hosts
from tests.support import polling
from tests.support.stack import Stack

# Horizon's first start on a machine collects and compresses its static files.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "scripts" / "horizon" / "run.sh"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Installing Horizon and compressing its static files takes a few minutes the first time.
HORIZON_READY_S = 600.0
# One wizard step, page or API call seen from the browser.
PAGE_S = 60.0


@dataclass
class Horizon:
    url: str
    username: str
    password: str


def _get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status)
    except OSError:
        return 0


@pytest.fixture
def horizon(cloud: Stack, tmp_path: Path) -> Iterator[Horizon]:
    listen = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "horizon.log").open("w")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "LOOM_"))}
    proc = subprocess.Popen(
        [str(RUN), f"{cloud.gateway_url}/identity/v3", listen],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://{listen}"

    def serving() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"run.sh exited: {(tmp_path / 'horizon.log').read_text()[-3000:]}")
        return _get_status(f"{url}/auth/login/") == 200

    try:
        polling.wait_until(serving, HORIZON_READY_S, "Horizon serving its sign-in page", every=1.0)
        auth = yaml.safe_load((cloud.data_dir / "clouds.yaml").read_text())["clouds"]["loom"]
        yield Horizon(url, auth["auth"]["username"], auth["auth"]["password"])
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(PAGE_S)
    driver.implicitly_wait(PAGE_S)
    try:
        yield driver
    finally:
        driver.quit()


def _sign_in(browser: Any, horizon: Horizon) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{horizon.url}/auth/login/")
    browser.find_element(By.ID, "id_username").send_keys(horizon.username)
    browser.find_element(By.ID, "id_password").send_keys(horizon.password)
    browser.find_element(By.ID, "loginBtn").click()
    polling.wait_until(
        lambda: "/auth/login" not in browser.current_url, PAGE_S, "signed in", every=0.5
    )


def _errors(browser: Any) -> list[str]:
    """The error banners Horizon shows when an API call behind the page failed."""
    from selenium.webdriver.common.by import By

    browser.implicitly_wait(0)
    try:
        found = browser.find_elements(By.CSS_SELECTOR, ".alert-danger, .alert-error")
        return [e.text for e in found if e.text.strip()]
    finally:
        browser.implicitly_wait(PAGE_S)


PROJECT_PAGES = (
    "/project/",
    "/project/instances/",
    "/project/images/",
    "/project/key_pairs/",
    "/project/server_groups/",
    "/project/api_access/",
    "/project/networks/",
    "/project/routers/",
    "/project/security_groups/",
    "/project/floating_ips/",
    "/project/network_topology/",
)


async def test_horizon_opens_every_project_page_without_an_error(
    cloud: Stack, horizon: Horizon, browser: Any
) -> None:
    await wait_for_hosts(cloud, 3)
    _sign_in(browser, horizon)
    seen = {}
    for page in PROJECT_PAGES:
        browser.get(horizon.url + page)
        seen[page] = (browser.title, _errors(browser))
    failed = {p: s for p, s in seen.items() if s[1] or "Error" in s[0] or "Unauthorized" in s[0]}
    assert not failed, failed
