#!/usr/bin/env python3
"""Take the README's dashboard screenshots: an embedded broker with traffic flowing, shot by
headless Chromium through Selenium.

    .venv/bin/python scripts/screenshot_dashboard.py [--seconds 45] [--out docs/dashboard.png]

Needs Debian's chromium and chromium-driver (or any Chrome with its chromedriver on PATH) and
selenium (the test extras). It writes the overview to ``--out`` and the busiest queue's page
beside it (``dashboard-queue.png``).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import pika
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from leveret.broker.embedded import EmbeddedBroker

QUEUES = ("orders", "emails", "invoices.pdf", "audit.log", "thumbnails")


def viewport(browser: webdriver.Chrome, width: int, height: int) -> None:
    """Make the page exactly width x height, whatever the headless window's frame takes."""
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})


def shoot(browser: webdriver.Chrome, path: Path, width: int, most: int) -> None:
    """A PNG of the whole page (up to ``most`` pixels high)."""
    height = browser.execute_script(
        "return Math.ceil(document.getElementById('main').getBoundingClientRect().bottom"
        " + window.scrollY)")
    viewport(browser, width, min(int(height), most))
    time.sleep(0.5)  # the charts redraw at the new size
    browser.save_screenshot(str(path))


def chrome(profile: str, width: int, height: int) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    binary = shutil.which("chromium") or shutil.which("google-chrome")
    if binary:
        options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                 f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = shutil.which("chromedriver")
    browser = webdriver.Chrome(options=options, service=Service(driver) if driver else None)
    viewport(browser, width, height)
    return browser


class Traffic:
    """Publishers with confirms and consumers with acks, at a rate that rises and falls."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.slow = threading.Event()  # set: the consumers take their time (a backlog builds)
        self.threads = [threading.Thread(target=self.publish, daemon=True),
                        threading.Thread(target=self.consume, args=("orders", 0.012), daemon=True),
                        threading.Thread(target=self.consume, args=("thumbnails", 0.02),
                                         daemon=True)]

    def __enter__(self) -> Traffic:
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        channel = connection.channel()
        channel.exchange_declare("events", "topic", durable=True)
        for name in QUEUES:
            channel.queue_declare(name, durable=True,
                                  arguments={"x-max-length": 100_000} if name == "audit.log"
                                  else None)
        channel.queue_bind("audit.log", "events", "#")
        channel.queue_bind("emails", "events", "user.*")
        connection.close()
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(5)

    def publish(self) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        channel = connection.channel()
        channel.confirm_delivery()
        started = time.monotonic()
        n = 0
        while not self.stop.is_set():
            elapsed = time.monotonic() - started
            rate = 60 + 45 * math.sin(elapsed / 7) + 20 * math.sin(elapsed / 2.3)
            n += 1
            body = f'{{"order": {n}, "sku": "LEV-{n % 97:03d}", "qty": {1 + n % 5}}}'
            props = pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                         headers={"source": "shop"})
            channel.basic_publish("", "orders", body.encode(), props)
            if n % 3 == 0:
                channel.basic_publish("events", f"user.{n % 7}", f"signup {n}".encode())
            if n % 2 == 0:
                channel.basic_publish("", "thumbnails", bytes(range(64)))
            if n % 50 == 0:
                channel.basic_publish("", "invoices.pdf", b"%PDF-1.7 ...",
                                      pika.BasicProperties(content_type="application/pdf"))
            time.sleep(1 / max(rate, 5))
        connection.close()

    def consume(self, queue: str, delay: float) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        channel = connection.channel()
        channel.basic_qos(prefetch_count=20)
        seen = 0
        for method, _props, _body in channel.consume(queue, inactivity_timeout=0.2):
            if self.stop.is_set():
                break
            if method is None:
                continue
            seen += 1
            time.sleep(delay * (8 if self.slow.is_set() else 1))
            if seen % 40 == 0:  # now and then a message goes back to the queue
                channel.basic_nack(method.delivery_tag, requeue=True)
            else:
                channel.basic_ack(method.delivery_tag)
        channel.cancel()
        connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=45, help="traffic before the shots")
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile, \
            EmbeddedBroker(management_port=0) as broker, Traffic(broker.url) as traffic:
        base = f"http://127.0.0.1:{broker.broker.management_port}/"
        driver = chrome(profile, args.width, args.height)
        try:
            driver.get(base)
            driver.find_element(By.ID, "login-submit").click()
            WebDriverWait(driver, 10).until(
                lambda d: d.execute_script("return document.body.dataset.page") == "overview")
            driver.execute_script("const s = document.getElementById('interval');"
                                  "s.value = '1000'; s.dispatchEvent(new Event('change'));")
            time.sleep(args.seconds)
            shoot(driver, args.out, args.width, args.height)
            viewport(driver, args.width, args.height)
            driver.get(base + "#/queues/%2F/orders")
            WebDriverWait(driver, 10).until(lambda d: int(
                d.find_element(By.ID, "chart-depth").get_attribute("data-points")) >= 1)
            time.sleep(min(args.seconds, 15))
            traffic.slow.set()
            time.sleep(8)
            driver.find_element(By.ID, "peek-count").clear()
            driver.find_element(By.ID, "peek-count").send_keys("2")
            driver.find_element(By.ID, "peek-button").click()
            WebDriverWait(driver, 10).until(lambda d: d.find_elements(
                By.CSS_SELECTOR, "#peek-results article.message"))
            driver.execute_script("window.scrollTo(0, 0)")
            queue_shot = args.out.with_name(args.out.stem + "-queue" + args.out.suffix)
            shoot(driver, queue_shot, args.width, 2 * args.height)
            print(f"wrote {args.out} and {queue_shot}")
        finally:
            driver.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
