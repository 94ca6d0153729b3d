"""The admin page at /ui, driven in a real headless Chromium (Debian's chromium and
chromedriver) with selenium."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.keys_fixtures import CHAT, MASTER, bearer, flush, serve_keys
from tests.pg_server import missing

INSTALL = "install them: apt-get install -y chromium chromium-driver; pip install selenium"


def _find(name: str, fallback: str) -> str | None:
    found = shutil.which(name)
    return found or (fallback if os.path.exists(fallback) else None)


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    chromium = _find("chromium", "/usr/bin/chromium")
    driver_path = _find("chromedriver", "/usr/bin/chromedriver")
    if chromium is None or driver_path is None:
        missing(f"chromium or chromedriver not found: {INSTALL}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing(f"selenium not installed: {INSTALL}")
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not download anything
    options = Options()
    options.binary_location = chromium  # type: ignore[assignment]
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_admin_page_files_forbid_anything_external(tmp_path: Path) -> None:
    with serve_keys(f"sqlite:///{tmp_path}/gw.db") as (handle, _):
        page = httpx.get(handle.url + "/ui")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp
        for asset, kind in (("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css")):
            response = httpx.get(handle.url + asset)
            assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
            assert "http://" not in response.text.replace("http://www.w3.org/2000/svg", "")
            assert "https://" not in response.text
        assert "https://" not in page.text and "http://" not in page.text


def test_create_and_revoke_a_key_in_the_browser(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 20)
    with serve_keys(f"sqlite:///{tmp_path}/gw.db") as (handle, app):
        browser.get(handle.url + "/ui")
        browser.find_element(By.ID, "master-key").send_keys("sk-wrong")
        browser.find_element(By.ID, "login-button").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "login-error"), "Wrong master key"))

        key_input = browser.find_element(By.ID, "master-key")
        key_input.clear()
        key_input.send_keys(MASTER)
        browser.find_element(By.ID, "login-button").click()
        wait.until(ec.visibility_of_element_located((By.ID, "keys")))
        wait.until(ec.text_to_be_present_in_element((By.ID, "models-list"), "gpt-a"))

        browser.find_element(By.ID, "new-alias").send_keys("browser-key")
        Select(browser.find_element(By.ID, "new-models")).select_by_value("gpt-a")
        browser.find_element(By.ID, "new-budget").send_keys("10")
        browser.find_element(By.ID, "create-key").click()
        wait.until(ec.visibility_of_element_located((By.ID, "new-key-box")))
        key = browser.find_element(By.ID, "new-key-value").text
        assert key.startswith("sk-")
        row = wait.until(
            ec.presence_of_element_located(
                (By.XPATH, "//table[@id='keys-table']//tr[td[1][text()='browser-key']]")
            )
        )
        assert "gpt-a" in row.text and key not in row.text  # the key itself is shown once

        with httpx.Client(base_url=handle.url) as client:
            assert client.post("/v1/chat/completions", json=CHAT, headers=bearer(key)).is_success
            other = client.post(
                "/v1/chat/completions", json={**CHAT, "model": "gpt-b"}, headers=bearer(key)
            )
            assert other.status_code == 403

        browser.find_element(By.ID, "new-key-done").click()
        assert browser.find_element(By.ID, "new-key-value").text == ""
        # Spend rows are written every 0.2 s: the page refreshed before that never shows
        # this one (it failed so in a full run). Written now, then read by the page.
        flush(handle, app)
        browser.find_element(By.ID, "refresh").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "logs-table"), "browser-key"))
        wait.until(ec.text_to_be_present_in_element((By.ID, "spend-by-key"), "browser-key"))
        wait.until(ec.text_to_be_present_in_element((By.ID, "spend-by-model"), "gpt-a"))
        assert browser.find_elements(By.CSS_SELECTOR, "#spend-chart svg rect")

        row = browser.find_element(
            By.XPATH, "//table[@id='keys-table']//tr[td[1][text()='browser-key']]"
        )
        row.find_element(By.CSS_SELECTOR, "button.revoke").click()
        wait.until(ec.alert_is_present()).accept()
        wait.until(
            ec.invisibility_of_element_located(
                (By.XPATH, "//table[@id='keys-table']//tr[td[1][text()='browser-key']]")
            )
        )
        with httpx.Client(base_url=handle.url) as client:
            revoked = client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
            assert revoked.status_code == 401

        problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        # The one expected error: the wrong master key's 401 (fetch logs failed requests).
        assert all("401" in e["message"] for e in problems), problems
