"""A page in a headless Chromium of its own, for the browser tests (chat.py, client.py).

Chromium and chromedriver are Debian's (scripts/setup.sh: setup_browser); Selenium is given the
driver's path, so Selenium Manager never runs and nothing is downloaded.
"""

import os

# Selenium Manager is skipped when the Service names the driver; offline mode is the second lock.
os.environ["SE_OFFLINE"] = "true"

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


class HeadlessPage:
    """`url` loaded in a browser of its own (not a tab: no page is a background tab whose timers
    the browser throttles), its console kept; `timeout` bounds page loads and scripts."""

    def __init__(self, who, url, timeout, window_size=None):
        self.who, self.timeout = who, timeout
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
            options.add_argument(arg)
        if window_size:
            options.add_argument(f"--window-size={window_size}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(executable_path=CHROMEDRIVER)
        self.driver = webdriver.Chrome(service=service, options=options)
        self.driver.set_page_load_timeout(timeout)
        self.driver.set_script_timeout(timeout)
        self.driver.get(url)

    def console(self):
        try:
            return [f"{e['level']} {e['message']}" for e in self.driver.get_log("browser")]
        except WebDriverException as e:
            return [f"(console log unavailable: {e.msg})"]

    def quit(self):
        try:
            self.driver.quit()
        except WebDriverException:
            pass
