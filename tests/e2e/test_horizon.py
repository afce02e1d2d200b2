"""OpenStack's dashboard (Horizon, unmodified, from PyPI) in headless Chromium against a
running Loom: a tenant signs in, every page of the project panel opens without an error,
and the Launch Instance wizard boots a server on a tenant network whose page then lists
its interface. scripts/horizon/run.sh installs and serves Horizon."""

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
from tests.e2e.test_openstack_clients import osc
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


def _launch_instance(browser: Any, horizon: Horizon, name: str) -> None:
    """Goes through the Launch Instance wizard: name, image, flavor, network, launch."""
    from selenium.webdriver.common.by import By

    modal = "//div[contains(@class,'modal-dialog')]"

    def step(title: str) -> None:
        browser.find_element(By.XPATH, f"{modal}//li//span[normalize-space()='{title}']").click()

    def allocate(text: str) -> None:
        def row() -> Any:
            rows = browser.find_elements(By.XPATH, f"{modal}//tr[contains(., '{text}')]")
            shown = [r for r in rows if r.is_displayed() and r.find_elements(By.TAG_NAME, "button")]
            return shown[0] if shown else None

        polling.wait_until(lambda: row() is not None, PAGE_S, f"{text} offered", every=0.5)
        row().find_elements(By.TAG_NAME, "button")[-1].click()

    browser.get(f"{horizon.url}/project/instances/")
    browser.find_element(By.ID, "instances__action_launch-ng").click()
    browser.find_element(By.CSS_SELECTOR, ".modal-dialog input[name='name']").send_keys(name)
    step("Source")
    allocate("tiny")
    step("Flavor")
    allocate("m1.tiny")
    step("Networks")
    # A project with one network has it allocated already; otherwise pick it.
    allocated = browser.find_element(By.XPATH, f"{modal}//*[contains(., 'Allocated')]")
    if "web" not in allocated.text:
        allocate("web")
    browser.find_element(
        By.XPATH, f"{modal}//button[contains(normalize-space(), 'Launch Instance')]"
    ).click()
    polling.wait_until(
        lambda: not browser.find_elements(By.XPATH, modal), PAGE_S, "the wizard closed", every=0.5
    )


async def test_horizon_launches_a_server_on_a_network_and_shows_its_interface(
    cloud: Stack, horizon: Horizon, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    await wait_for_hosts(cloud, 3)
    image = tmp_path / "tiny.raw"
    image.write_bytes(b"\0" * 65536)
    osc(cloud, "image", "create", "--file", str(image), "--disk-format", "raw",
        "--container-format", "bare", "--public", "tiny", admin=True)  # fmt: skip
    osc(cloud, "network", "create", "web")
    osc(cloud, "subnet", "create", "--network", "web", "--subnet-range", "10.42.0.0/24", "web4")

    _sign_in(browser, horizon)
    _launch_instance(browser, horizon, "hz1")

    def status() -> str:
        return str(osc(cloud, "server", "show", "hz1", "-f", "value", "-c", "status"))

    polling.wait_until(lambda: status() == "ACTIVE", polling.boot_s(), "hz1 ACTIVE", every=0.5)
    server = osc(cloud, "server", "show", "hz1", "-f", "json")
    ports = osc(cloud, "port", "list", "--server", server["id"], "-f", "json")
    assert len(ports) == 1
    address = ports[0]["Fixed IP Addresses"][0]["ip_address"]
    assert address.startswith("10.42.0.")

    browser.get(f"{horizon.url}/project/instances/{server['id']}/")
    assert not _errors(browser)
    assert address in browser.find_element(By.TAG_NAME, "body").text
    browser.get(f"{horizon.url}/project/instances/{server['id']}/?tab=instance_details__interfaces")
    interfaces = browser.find_element(By.ID, "interfaces").text
    assert ports[0]["ID"] in interfaces or address in interfaces, interfaces
    assert not _errors(browser)
