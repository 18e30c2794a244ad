"""The web dashboard in a real browser: Debian's headless Chromium driven by Selenium against
an embedded broker whose queues are made over AMQP (pika).

Skipped, with the reason, when selenium, chromium or chromedriver is missing (``.ci/run``
installs the Debian packages). Every test fails on a SEVERE entry in the browser's console:
a JavaScript error or a request the broker refused.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest
from pika_helpers import connect, pika_channel

from leveret.broker.embedded import EmbeddedBroker

pytestmark = [pytest.mark.leveret_only, pytest.mark.timeout(60)]

CHROMIUM = os.environ.get("LEVERET_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LEVERET_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT = 10.0  # seconds a page gets to show what a test waits for


def _missing() -> str | None:
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (it is in the test extras: pip install -e '.[test]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} is missing (Debian: apt-get install {package})"
    return None


class Dashboard:
    """The browser on the dashboard of one broker, with waits that read the page by script."""

    def __init__(self, driver: Any, base: str) -> None:
        self.driver = driver
        self.base = base

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"the dashboard did not show {what} within {timeout:.0f}s")
            time.sleep(0.05)

    def open(self, page: str) -> None:
        """Go to ``#/<page>`` and wait until its first refresh is in (no error shown)."""
        self.js("document.body.dataset.page = '';"
                "if (location.hash === arguments[0]) window.dispatchEvent(new Event('hashchange'));"
                "else location.hash = arguments[0];", f"#/{page}")
        self.wait(f"page #/{page}", lambda: self.js(
            "const b = document.body, e = document.getElementById('page-error');"
            "return b.dataset.page !== '' && b.dataset.polling === 'running'"
            " && e !== null && e.hidden;"))

    def click(self, selector: str) -> None:
        self.js("document.querySelector(arguments[0]).click()", selector)

    def text(self, selector: str) -> str | None:
        return self.js("const e = document.querySelector(arguments[0]);"
                       "return e ? e.textContent.trim() : null;", selector)

    def fill(self, selector: str, value: str) -> None:
        element = self.driver.find_element("css selector", selector)
        element.clear()
        element.send_keys(value)

    def confirm(self, accept: bool = True) -> None:
        self.wait("the confirm dialog", lambda: self.js(
            "return document.getElementById('confirm').open"))
        self.click("#confirm-ok" if accept else "#confirm-cancel")

    def row_cells(self, key: str) -> dict[str, str] | None:
        """The cells of the table row for ``key`` (vhost + newline + name), by column."""
        return self.js(
            "const row = [...document.querySelectorAll('#page tbody tr')]"
            "  .find((tr) => tr.dataset.key === arguments[0]);"
            "if (!row) return null;"
            "return Object.fromEntries([...row.cells].map("
            "  (td) => [td.className.split(' ')[0].replace('col-', ''), td.textContent.trim()]));",
            key)

    def severe(self) -> list[str]:
        """SEVERE console entries since the last call (reading the log empties it)."""
        return [entry["message"] for entry in self.driver.get_log("browser")
                if entry["level"] == "SEVERE"]


@pytest.fixture(scope="module")
def dash_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(management_port=0) as embedded:
        yield embedded


@pytest.fixture(scope="module")
def browser(dash_broker: EmbeddedBroker) -> Iterator[Dashboard]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="leveret-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    except WebDriverException as error:
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(f"chromium did not start under chromedriver: {error.msg}")
    driver.set_script_timeout(WAIT)
    dashboard = Dashboard(driver, f"http://127.0.0.1:{dash_broker.broker.management_port}/")
    try:
        driver.get(dashboard.base)
        dashboard.wait("the login form", lambda: dashboard.js(
            "return !document.getElementById('login').hidden"))
        dashboard.fill("#login-user", "guest")
        dashboard.fill("#login-password", "guest")
        dashboard.click("#login-submit")
        dashboard.wait("the overview after logging in", lambda: dashboard.js(
            "return document.body.dataset.page === 'overview'"))
        # poll every second: the tests wait for changes the page picks up on a poll
        dashboard.js("const s = document.getElementById('interval'); s.value = '1000';"
                     "s.dispatchEvent(new Event('change'));")
        yield dashboard
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def dash(browser: Dashboard) -> Iterator[Dashboard]:
    """The logged-in dashboard; the test fails on any SEVERE console entry it caused."""
    browser.severe()
    yield browser
    assert browser.severe() == []


@pytest.fixture(scope="module")
def amqp(dash_broker: EmbeddedBroker) -> Iterator[Any]:
    with pika_channel(dash_broker.url) as (_connection, channel):
        yield channel


def fresh_queue(channel: Any, messages: int = 0, prefix: str = "dash") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    channel.queue_declare(name)
    for n in range(messages):
        channel.basic_publish("", name, json.dumps({"n": n, "what": "order"}).encode(),
                              pika.BasicProperties(content_type="application/json",
                                                   headers={"source": "test"}))
    return name


def test_every_page_loads_without_console_errors(dash: Dashboard, amqp: Any) -> None:
    name = fresh_queue(amqp, 1)
    for page in ("", "queues", f"queues/%2F/{name}", "exchanges", "exchanges/%2F/amq.direct",
                 "exchanges/%2F/amq.default", "connections", "admin"):
        dash.open(page)
        assert dash.severe() == [], page
    dash.open("connections")
    dash.wait("the test's own connection", lambda: dash.js(
        "return document.querySelectorAll('#page tbody tr[data-key]').length") >= 1)


def test_a_wrong_password_shows_the_login_again(browser: Dashboard) -> None:
    browser.js("sessionStorage.setItem('leveret.auth', btoa('guest:wrong'));"
               "location.hash = '#/queues'; location.reload();")
    browser.wait("the login form again", lambda: browser.js(
        "return !document.getElementById('login').hidden"
        " && document.getElementById('login-error').textContent !== ''"))
    assert "Login failed" in (browser.text("#login-error") or "")
    browser.severe()  # the refused request is in the console, as it should be
    browser.fill("#login-password", "guest")
    browser.click("#login-submit")
    browser.wait("the queues page after logging in", lambda: browser.js(
        "return document.body.dataset.page === 'queues'"))
    assert browser.severe() == []


def test_a_queue_made_over_amqp_appears_with_its_depth(dash: Dashboard, amqp: Any) -> None:
    prefix = f"depth-{uuid.uuid4().hex[:6]}"
    small, big = fresh_queue(amqp, 2, prefix), fresh_queue(amqp, 5, prefix)
    dash.open("queues")
    dash.fill("#page input.filter", prefix)
    dash.wait("only the two queues", lambda: (dash.text("#page .summary") or "").startswith(
        "2 queues (of "))
    cells = dash.row_cells(f"/\n{big}")
    assert cells["name"] == big and cells["messages"] == "5" and cells["ready"] == "5"
    assert dash.row_cells(f"/\n{small}")["messages"] == "2"

    def order() -> list[str]:
        return dash.js("return [...document.querySelectorAll('#page tbody tr[data-key]')]"
                       ".map((tr) => tr.cells[1].textContent)")

    dash.js("document.querySelector(\"#page th[data-sort='messages']\").click()")
    dash.wait("the fullest queue first", lambda: order() == [big, small])
    dash.js("document.querySelector(\"#page th[data-sort='messages']\").click()")
    dash.wait("the emptiest queue first", lambda: order() == [small, big])
    amqp.basic_publish("", small, b"more")
    amqp.basic_publish("", small, b"more")
    amqp.basic_publish("", small, b"more")  # now 5 against 5: the poll shows the new depth
    dash.wait("the new depth", lambda: dash.row_cells(f"/\n{small}")["messages"] == "5")


def test_the_overview_charts_grow_while_messages_flow(dash: Dashboard,
                                                     dash_broker: EmbeddedBroker) -> None:
    dash.open("")
    before = int(dash.js("return document.getElementById('chart-rates').dataset.points"))
    stop = threading.Event()

    def publish() -> None:
        connection = connect(dash_broker.url)
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare("dash-flow", auto_delete=True)
        while not stop.is_set():
            channel.basic_publish("", "dash-flow", b"tick")
            time.sleep(0.01)
        connection.close()

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    try:
        dash.wait("new points on the rates chart", lambda: int(dash.js(
            "return document.getElementById('chart-rates').dataset.points")) >= before + 3)
        dash.wait("a publish rate in the legend", lambda: dash.js(
            "const li = document.querySelector('#page .legend li strong');"
            "return li && parseFloat(li.textContent) > 0"))
        assert int(dash.js("return document.getElementById('chart-messages').dataset.points")) >= 2
        dash.wait("the publisher's connection counted", lambda: int(
            dash.text("#tile-connections") or 0) >= 2)
    finally:
        stop.set()
        publisher.join(5)
