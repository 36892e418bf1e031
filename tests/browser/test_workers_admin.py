"""The Workers admin page in headless Chromium (Debian `chromium` + `chromium-driver`,
driven by Selenium with the system browser and driver; nothing is downloaded): sign in,
add a worker and see its token once, revoke it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import need
from tests.voice_support import ApiServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    need(Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), "Chromium and chromedriver (Debian packages)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1280,900", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager never runs, so nothing is fetched.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "driver.log")),
                              options=options)
    driver.set_page_load_timeout(30)
    driver.implicitly_wait(5)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def server(pg_database) -> Iterator[ApiServer]:  # type: ignore[no-untyped-def]
    srv = ApiServer().start()
    try:
        yield srv
    finally:
        srv.stop()


def _heartbeat(server: ApiServer, token: str) -> int:
    return requests.post(f"{server.url}/api/v1/worker/heartbeat", json={"worker_id": "browser-host"},
                         headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code


def test_add_worker_shows_token_once_then_revoke(browser, server: ApiServer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    d = browser
    d.get(f"{server.url}/admin/workers")
    d.find_element(By.ID, "admin-token").send_keys("wrong-token")
    d.find_element(By.ID, "login").click()
    assert "Wrong admin token" in d.find_element(By.ID, "login-error").text
    d.find_element(By.ID, "admin-token").send_keys("test-admin-token")
    d.find_element(By.ID, "login").click()

    d.find_element(By.ID, "worker-name").send_keys("browser-worker")
    d.find_element(By.ID, "add-worker").click()
    token = d.find_element(By.ID, "new-token").text.strip()
    assert token.count(".") == 2, token  # a JWT
    assert "browser-worker" in d.find_element(By.ID, "new-token-box").text
    d.save_screenshot(str(tmp_path / "workers-token-shown.png"))
    assert _heartbeat(server, token) == 200

    d.get(f"{server.url}/admin/workers")  # the token is shown once only
    assert token not in d.page_source and not d.find_elements(By.ID, "new-token")
    row = next(r for r in d.find_elements(By.CSS_SELECTOR, "#workers tbody tr") if "browser-worker" in r.text)
    worker_id = row.get_attribute("data-worker-id")
    assert "active" in row.find_element(By.CSS_SELECTOR, "td.state").text
    assert "browser-host" in row.text  # the heartbeat's WORKER_ID

    row.find_element(By.CSS_SELECTOR, "button.revoke").click()
    assert worker_id in d.find_element(By.ID, "revoked-notice").text
    row = d.find_element(By.ID, f"worker-{worker_id}")
    assert row.find_element(By.CSS_SELECTOR, "td.state").text == "revoked"
    assert not row.find_elements(By.CSS_SELECTOR, "button.revoke")
    d.save_screenshot(str(tmp_path / "workers-revoked.png"))
    assert (tmp_path / "workers-revoked.png").stat().st_size > 1000
    assert _heartbeat(server, token) == 401
