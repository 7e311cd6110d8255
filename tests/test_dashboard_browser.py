"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium, against a
real API (uvicorn), a real worker, Kafka and Redis. Events are published to Kafka; the page
(which refreshes itself) shows the numbers and a user's list change. A screenshot is written
to ``.streamrec/dashboard.png`` for a person to look at.

Skips, saying why, only where no browser is installed (``make install`` installs Debian's
``chromium`` and ``chromium-driver``).
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from pydantic import SecretStr

from serving.app import create_app
from core.kafka import EventProducer
from core.schema import Event, new_event_id
from streamrec.services import free_port
from tests.helpers import running_worker, served, wait_for

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
SCREENSHOT = REPO / ".streamrec" / "dashboard.png"
READ_KEY, WRITE_KEY = "dash-read", "dash-write"


def _browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no chromium/chromedriver on PATH (make install: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


class _Api:
    """The API served by uvicorn in a thread, on a free port."""

    def __init__(self, settings):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        wait_for(lambda: self.server.started, 30, "the API to start")
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=15)


def _send(producer: EventProducer, events: list[tuple[str, str, str]]) -> None:
    now = time.time()
    for n, (user, item, kind) in enumerate(events):
        producer.send(Event(user_id=user, item_id=item, type=kind, ts=now + n * 1e-3, event_id=new_event_id()))
    producer.flush()


def _report(folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True)
    (folder / "report.md").write_text("# Backtest\n\n| model | HR@10 |\n|---|---:|\n| cooc | 0.1217 |\n| blend | 0.1306 |\n\n"
                                      "![HR over time](report.png)\n")
    fig, ax = plt.subplots(figsize=(4, 2))
    ax.plot([0, 1, 2], [0.1, 0.12, 0.13])
    fig.savefig(folder / "report.png")
    plt.close(fig)


def test_dashboard_shows_the_stream_and_a_user_changing(settings, tmp_path):
    browser = _browser()
    _report(tmp_path / "reports" / "ml-sample")
    settings = settings.model_copy(update={"read_api_key": SecretStr(READ_KEY), "api_key": SecretStr(WRITE_KEY),
                                           "reports_dir": tmp_path / "reports", "similar_refresh_s": 0.0})
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    def text(css: str) -> str:
        return read(lambda: browser.find_element(By.CSS_SELECTOR, css).text)

    def read(look):
        """What ``look`` reads off the page; the page redraws its panels every few seconds,
        so an element found a moment ago may be gone: look again."""
        from selenium.common.exceptions import StaleElementReferenceException

        for _ in range(20):
            try:
                return look()
            except StaleElementReferenceException:
                continue
        return look()

    def until(check, what, timeout_s: float = 40):
        try:
            return WebDriverWait(browser, timeout_s, poll_frequency=0.25).until(lambda _: check())
        except Exception as exc:
            raise AssertionError(f"the page never showed {what() if callable(what) else what}") from exc

    def user_list() -> list[str]:
        return read(lambda: [a.get_attribute("data-item")
                             for a in browser.find_elements(By.CSS_SELECTOR, "#user-list a.item-link")])

    # a crowd: users of group g view g0 -> g1 -> g2 (so each item has neighbours), titles known
    crowd = [(f"c{n}", f"{'ab'[n % 2]}{step}", "view") for n in range(40) for step in range(3)]
    with running_worker(settings) as worker, _Api(settings) as base, \
            EventProducer(settings.kafka_bootstrap, settings.topic) as producer:
        for item in ("a0", "a1", "a2", "b0", "b1", "b2"):
            producer.send(Event(user_id="", item_id=item, type="item", ts=time.time(), event_id=new_event_id(),
                                context={"title": f"Film {item.upper()}", "category": ["Drama"]}))
        _send(producer, crowd + [("u1", "a0", "click")])
        first = len(crowd) + 7
        wait_for(lambda: served(worker) >= first, 60, "the first events to be applied")
        try:
            browser.get(f"{base}/dashboard")
            assert "streamrec" in browser.title
            until(lambda: text("#total-applied") == f"{first:,}", f"{first} events applied")
            assert float(text("#rate-applied")) > 0
            assert "model blend" in text("#meta")

            # more events: the page refreshes itself and the numbers move
            _send(producer, [(f"c{n}", "b0", "click") for n in range(20)])
            until(lambda: text("#total-applied") == f"{first + 20:,}", f"{first + 20} events applied")

            # a user's panel needs the read key
            browser.find_element(By.ID, "user-id").send_keys("u1", Keys.ENTER)
            until(lambda: "401" in text("#user"), "the panel refused without a key")
            key = browser.find_element(By.ID, "api-key")
            key.send_keys(READ_KEY, Keys.TAB)  # "change": the panel loads again with the key
            until(lambda: len(user_list()) >= 3, "u1's list")
            before = user_list()
            assert before[0] == "a1", before  # what follows a0 for the crowd
            first_row = text("#user-list tr:nth-child(2)")
            # the reason names the item that led to it (co-occurrence's or the sequence part's words)
            assert "Film A1" in first_row and re.search(r"often (viewed with|clicked after) a0", first_row), first_row
            assert "Film A0" in text("#user-events")

            # u1 turns to the b items: their list changes on the page
            _send(producer, [("u1", "b0", "purchase"), ("u1", "b1", "purchase")])
            until(lambda: user_list()[:1] == ["b2"], lambda: f"u1's list led by b2, not {user_list()}")
            assert re.search(r"often (viewed with|clicked after) b1", text("#user-list tr:nth-child(2)"))

            # served lists come back as impressions, counted for the fairness panel
            import httpx

            for n in range(10):
                httpx.get(f"{base}/users/c{n}/recommendations", headers={"X-API-Key": READ_KEY}).raise_for_status()
            until(lambda: text("#impressions-hour") not in ("0", "–"), "impressions counted")
            assert text("#over-exposed")

            # an item: metadata and similar items
            browser.find_element(By.ID, "item-id").send_keys("a1", Keys.ENTER)
            until(lambda: "Film A1" in text("#item"), "item a1's metadata")
            until(lambda: "a0" in text("#item") or "a2" in text("#item"), "a1's similar items")
            assert "Backtest" in text("#backtests") and "0.1306" in text("#backtests")

            browser.set_window_size(1400, browser.execute_script("return document.body.scrollHeight") + 40)
            browser.execute_script("window.scrollTo(0, 0)")
            SCREENSHOT.parent.mkdir(exist_ok=True)
            assert browser.save_screenshot(str(SCREENSHOT))

            # forgetting, from the page (a second click confirms); the write key does it
            key.clear()
            key.send_keys(WRITE_KEY, Keys.TAB)
            until(lambda: len(user_list()) >= 3, "u1's list, with the write key")
            forget = browser.find_element(By.ID, "forget")
            forget.click()
            forget.click()
            until(lambda: "forgetting" in text("#forget-result"), "the user being forgotten")
            until(lambda: "gets the popular list" in text("#user"), "u1 answered as a new user")
        finally:
            browser.quit()
