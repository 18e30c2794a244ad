"""The web dashboard in a real browser: Debian's headless Chromium driven by Selenium against
an embedded broker whose queues are made over AMQP (pika).

Skipped, with the reason, when selenium, chromium or chromedriver is missing (``.ci/run``
installs the Debian packages; ``LEVERET_CHROMIUM`` and ``LEVERET_CHROMEDRIVER`` name others).
Every test fails on a SEVERE entry in the browser's console: a JavaScript error or a request
the broker refused.
"""

from __future__ import annotations

import contextlib
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
from management_helpers import Api, eventually, q
from pika_helpers import connect, message_count, pika_channel, queue_exists

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

    def click_in_row(self, key: str, button: str) -> None:
        """Click the ``button`` (a CSS selector) in the table row for ``key``."""
        self.js("[...document.querySelectorAll('#page tbody tr')]"
                ".find((tr) => tr.dataset.key === arguments[0])"
                ".querySelector(arguments[1]).click()", key, button)

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
def http(dash_broker: EmbeddedBroker) -> Api:
    """The management API over plain HTTP, as guest, to check what the page did."""
    return Api(f"http://127.0.0.1:{dash_broker.broker.management_port}")


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


def test_the_page_and_its_files_are_served_without_login(http: Api) -> None:
    anonymous = http.as_user(None)
    page = anonymous.get("/")
    assert page.status == 200 and page.header("Content-Type").startswith("text/html")
    assert "{{version}}" not in page.text and "static/dashboard.js?v=" in page.text
    for name, kind in (("dashboard.js", "javascript"), ("chart.js", "javascript"),
                       ("dashboard.css", "text/css"), ("favicon.svg", "image/svg+xml")):
        answer = anonymous.get(f"/static/{name}")
        assert answer.status == 200 and kind in answer.header("Content-Type"), name
    assert anonymous.get("/static/nothing.js").status == 404
    assert anonymous.get("/api/leveret/history").status == 401


def test_history_gives_the_broker_totals_a_second_apart(http: Api) -> None:
    def two_samples() -> list[Any] | None:
        samples = http.ok("GET", "/api/leveret/history")["samples"]
        return samples if len(samples) >= 2 else None

    samples = eventually(two_samples, timeout=5)
    (first, totals), (second, _) = samples[-2:]
    assert 0.5 < second - first < 1.5 and {"publish", "confirm", "deliver_get", "ack",
                                            "redeliver"} <= set(totals)
    assert http.ok("GET", f"/api/leveret/history?since={first}")["samples"][0][0] == second
    assert http.get("/api/leveret/history?since=soon").status == 400
    user = f"dash-{uuid.uuid4().hex[:6]}"
    http.ok("PUT", f"/api/users/{user}", {"password": "pw", "tags": "management"})
    try:
        refused = http.as_user(user, "pw").get("/api/leveret/history")
        assert refused.status == 401 and refused.json["reason"] == "Not monitor user"
    finally:
        http.ok("DELETE", f"/api/users/{user}")


def log_in(dash: Dashboard, user: str, password: str) -> None:
    dash.wait("the login form", lambda: dash.js("return !document.getElementById('login').hidden"))
    dash.fill("#login-user", user)
    dash.fill("#login-password", password)
    dash.click("#login-submit")


def test_a_wrong_password_and_a_401_show_the_login(browser: Dashboard, http: Api) -> None:
    browser.click("#logout")
    log_in(browser, "guest", "wrong")
    browser.wait("the refusal", lambda: "Login failed" in (browser.text("#login-error") or ""))
    browser.severe()  # the refused request is in the console, as it should be
    # a user deleted while logged in: the next poll's 401 brings the login back
    user = f"dash-{uuid.uuid4().hex[:6]}"
    http.ok("PUT", f"/api/users/{user}", {"password": "pw", "tags": "management"})
    http.ok("PUT", f"/api/permissions/%2F/{user}", {"configure": ".*", "write": ".*",
                                                    "read": ".*"})
    log_in(browser, user, "pw")
    browser.open("")  # the charts sampled by the page: the history is for monitoring users
    browser.wait("a second sample", lambda: int(browser.js(
        "return document.getElementById('chart-messages').dataset.points")) >= 2)
    assert browser.text("#whoami") == f"{user} · management"
    assert browser.js("return document.getElementById('nav-admin').hidden")
    assert browser.severe() == []
    http.ok("DELETE", f"/api/users/{user}")
    browser.wait("the login form after a 401", lambda: browser.js(
        "return !document.getElementById('login').hidden"))
    browser.severe()  # the refused polls too
    log_in(browser, "guest", "guest")
    browser.open("queues")
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
        dash.wait("points on the queued messages chart", lambda: int(dash.js(
            "return document.getElementById('chart-messages').dataset.points")) >= 3)
        dash.wait("the publisher's connection counted", lambda: dash.text(
            "#tile-connections") == str(len(dash_broker.broker.connections)) != "1")
    finally:
        stop.set()
        publisher.join(5)


def test_an_alarm_shows_on_the_overview(dash: Dashboard, dash_broker: EmbeddedBroker) -> None:
    dash.open("")
    assert dash.text("#alarms") == "No alarms"
    broker = dash_broker.broker
    dash_broker.call(broker._set_alarm, "low on memory (test)", True, "a test")
    try:
        dash.wait("the alarm", lambda: "low on memory (test)" in (dash.text("#alarms") or ""))
        assert "bad" in dash.js("return document.getElementById('alarms').className")
    finally:
        dash_broker.call(broker._set_alarm, "low on memory (test)", False, "a test")
    dash.wait("no alarm again", lambda: dash.text("#alarms") == "No alarms")


def test_purge_from_the_queue_page(dash: Dashboard, amqp: Any) -> None:
    name = fresh_queue(amqp, 4)
    dash.open(f"queues/%2F/{name}")
    dash.wait("the depth", lambda: dash.text("#tile-messages") == "4")
    dash.click("#purge")
    dash.confirm()
    dash.wait("the empty queue", lambda: dash.text("#tile-messages") == "0")
    assert message_count(amqp, name) == 0


def test_peek_shows_messages_that_stay_in_the_queue(dash: Dashboard, amqp: Any,
                                                    http: Api) -> None:
    name = fresh_queue(amqp, 3)
    dash.open(f"queues/%2F/{name}")
    dash.fill("#peek-count", "2")
    dash.click("#peek-button")
    dash.wait("two messages", lambda: dash.js(
        "return document.querySelectorAll('#peek-results article.message').length") == 2)
    first = dash.text("#peek-results article.message[data-index='0']") or ""
    assert '"what": "order"' in first  # the JSON body, pretty-printed
    assert "application/json" in first and '{"source":"test"}' in first  # its properties
    assert "redelivered" not in first
    assert message_count(amqp, name) == 3
    queue = http.ok("GET", f"/api/queues/%2F/{q(name)}")
    assert queue["messages"] == 3 and queue["messages_unacknowledged"] == 0


def test_publish_and_delete_from_the_queue_page(dash: Dashboard, amqp: Any,
                                                dash_broker: EmbeddedBroker) -> None:
    name = fresh_queue(amqp)
    dash.open(f"queues/%2F/{name}")
    dash.fill("#publish-payload", "hello from the dashboard")
    dash.fill("#publish-headers", "attempt = 1")
    dash.click("#publish-button")
    dash.wait("the published message", lambda: dash.text("#tile-messages") == "1")
    _method, properties, body = amqp.basic_get(name, auto_ack=True)
    assert body == b"hello from the dashboard" and properties.headers == {"attempt": 1}
    dash.click("#delete")
    dash.confirm(accept=False)
    dash.wait("the dialog closed", lambda: not dash.js(
        "return document.getElementById('confirm').open"))
    assert queue_exists(dash_broker.url, name)
    dash.click("#delete")
    dash.confirm()
    dash.wait("the queues page", lambda: dash.js("return location.hash") == "#/queues")
    assert not queue_exists(dash_broker.url, name)
    dash.js("location.hash = arguments[0]", f"#/queues/%2F/{name}")
    dash.wait("that the queue is gone", lambda: "There is no queue" in (
        dash.text("#page-error") or ""))
    assert dash.js("return document.getElementById('purge').disabled")
    dash.open("queues")
    dash.severe()  # the 404s of the queue's page


def test_close_a_connection(dash: Dashboard, dash_broker: EmbeddedBroker, http: Api) -> None:
    before = {c["name"] for c in http.ok("GET", "/api/connections")}
    victim = connect(dash_broker.url)
    try:
        (name,) = {c["name"] for c in http.ok("GET", "/api/connections")} - before
        dash.open("connections")
        dash.wait("the new connection", lambda: dash.row_cells(name))
        dash.click_in_row(name, "button.close")
        dash.confirm()
        dash.wait("the connection gone", lambda: dash.row_cells(name) is None)
        deadline = time.monotonic() + WAIT
        with contextlib.suppress(pika.exceptions.AMQPConnectionError):
            while victim.is_open and time.monotonic() < deadline:
                victim.process_data_events(0.1)
        assert not victim.is_open
    finally:
        if victim.is_open:
            victim.close()


def test_admin_adds_and_deletes_a_user_a_vhost_and_a_permission(dash: Dashboard,
                                                                http: Api) -> None:
    user, vhost = f"dash-user-{uuid.uuid4().hex[:6]}", f"dash-vhost-{uuid.uuid4().hex[:6]}"
    dash.open("admin")
    dash.fill("#add-user-name", user)
    dash.fill("#add-user-password", "secret")
    dash.js("document.getElementById('add-user-tags').value = 'monitoring'")
    dash.click("#users button[type=submit]")
    dash.wait("the new user", lambda: dash.row_cells(user))
    assert dash.row_cells(user)["tags"] == "monitoring"
    assert http.as_user(user, "secret").get("/api/whoami").json["tags"] == ["monitoring"]
    dash.click_in_row(user, "button.delete")
    dash.confirm()
    dash.wait("the user gone", lambda: dash.row_cells(user) is None)
    assert http.get(f"/api/users/{user}").status == 404
    dash.fill("#add-vhost-name", vhost)
    dash.click("#vhosts button[type=submit]")
    dash.wait("the new vhost", lambda: dash.row_cells(vhost))
    assert vhost in [v["name"] for v in http.ok("GET", "/api/vhosts")]
    dash.wait("the vhost in the permission form", lambda: dash.js(
        "return [...document.getElementById('add-permission-vhost').options]"
        ".some((o) => o.value === arguments[0])", vhost))
    dash.js("document.getElementById('add-permission-vhost').value = arguments[0]", vhost)
    dash.fill("#add-permission-read", "^reports\\.")
    dash.click("#permissions button[type=submit]")
    dash.wait("the new permission", lambda: dash.row_cells(f"{vhost}\nguest"))
    assert http.ok("GET", f"/api/permissions/{q(vhost)}/guest")["read"] == "^reports\\."
    dash.click_in_row(f"{vhost}\nguest", "button.delete")
    dash.confirm()
    dash.wait("the permission gone", lambda: dash.row_cells(f"{vhost}\nguest") is None)
    dash.click_in_row(vhost, "button.delete")
    dash.confirm()
    dash.wait("the vhost gone", lambda: dash.row_cells(vhost) is None)
    assert vhost not in [v["name"] for v in http.ok("GET", "/api/vhosts")]


def test_polling_stops_while_the_tab_is_hidden_or_paused(dash: Dashboard) -> None:
    dash.open("queues")
    # count the page's requests; note the count as the tab hides or shows (before the page
    # reacts: a capturing listener on window) and the polling state after it reacted
    dash.js("window.calls = 0; window.counts = []; window.states = [];"
            "const original = window.fetch;"
            "window.fetch = (...args) => { window.calls += 1; return original(...args); };"
            "window.addEventListener('visibilitychange',"
            "  () => window.counts.push(window.calls), true);"
            "document.addEventListener('visibilitychange', () => window.states.push("
            "  document.visibilityState + ' ' + document.body.dataset.polling));")
    shown = dash.driver.current_window_handle
    dash.driver.switch_to.new_window("tab")  # the dashboard's tab is hidden behind it
    time.sleep(2.5)  # more than two polls' time
    dash.driver.close()
    dash.driver.switch_to.window(shown)
    dash.wait("polling again", lambda: dash.js("return document.body.dataset.polling")
              == "running")
    assert dash.js("return window.states")[0] == "hidden paused"
    hidden, shown_again = dash.js("return window.counts")
    assert hidden == shown_again  # not one request while hidden
    assert dash.js("return window.calls") > shown_again  # a refresh as soon as it shows
    dash.js("const s = document.getElementById('interval'); s.value = '0';"
            "s.dispatchEvent(new Event('change'));")
    assert dash.js("return document.body.dataset.polling") == "paused"
    time.sleep(0.5)  # a poll under way when paused ends
    calls = dash.js("return window.calls")
    time.sleep(1.5)
    assert dash.js("return window.calls") == calls
    dash.js("const s = document.getElementById('interval'); s.value = '1000';"
            "s.dispatchEvent(new Event('change'));")
    dash.wait("a poll", lambda: dash.js("return window.calls") > calls)
