#!/usr/bin/env python3
"""Drives examples/chat/index.html in three headless Chromium pages against a chat listener.

alice and bob join room `lobby`, carol joins `garden`; each page shows who is in its room
(presence: 2, 2 and 1). alice sends a message (with markup and
non-ASCII text, so that escaping and UTF-8 are checked on the way), which must reach alice and
bob and not carol; carol's own message must come back to her (so her socket is live when alice's
absence is checked); bob's reply must reach alice. Then dave joins the lobby: his page shows alice's and bob's messages
as the room's history, alice's page counts 3 here, and 2 again once dave's browser is gone.
Screenshots of the three pages go to
<shots>/chat-<who>.png, on failure too.

Prints one line per check; exits 0 when all pass, 1 on a failed check (with every page's #status
and browser console), 2 when the browser cannot be started.

    target/browser-venv/bin/python tests/browser/chat.py \
        --page http://127.0.0.1:8000/index.html --ws ws://127.0.0.1:8766/chat --shots target/shots

Chromium and chromedriver are Debian's (scripts/setup.sh: setup_browser); Selenium is given the
driver's path, so Selenium Manager never runs and nothing is downloaded.
"""

import argparse
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

from headless import CHROMEDRIVER, CHROMIUM, HeadlessPage
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

# Three separate browsers rather than tabs of one: no window switching.
PEOPLE = (("alice", "lobby"), ("bob", "lobby"), ("carol", "garden"))


class CheckFailed(Exception):
    pass


class Page(HeadlessPage):
    """One person's chat page in a browser of its own."""

    def __init__(self, who, room, url, timeout):
        self.room = room
        super().__init__(who, url, timeout, window_size="900,700")

    def status(self):
        return self.driver.find_element(By.ID, "status").get_attribute("textContent")

    def messages(self, which=".message"):
        return self.driver.execute_script(
            f"return [...document.querySelectorAll('#messages {which}')].map(e => e.textContent);"
        )

    def here(self):
        return self.driver.find_element(By.ID, "here").get_attribute("textContent")

    def wait_for(self, what, condition):
        try:
            wait = WebDriverWait(self.driver, self.timeout, poll_frequency=0.1)
            wait.until(lambda _: condition())
        except TimeoutException:
            status = self.status()
            raise CheckFailed(
                f"{self.who}: {what} not within {self.timeout:g} s (#status reads {status!r})"
            ) from None

    def send(self, text, press_enter):
        box = self.driver.find_element(By.ID, "input")
        box.send_keys(text)
        if press_enter:
            box.send_keys(Keys.ENTER)
        else:
            self.driver.find_element(By.ID, "send").click()


def ok(line):
    print(f"ok   {line}", flush=True)


def run(pages, open_page):
    alice, bob, carol = pages

    for page in pages:
        joined = f"joined {page.room}"
        page.wait_for(f"#status {joined!r}", lambda p=page, j=joined: p.status() == j)
        ok(f"{page.who}: {joined}")
    for page, count in ((alice, "2"), (bob, "2"), (carol, "1")):
        page.wait_for(f"{count} here", lambda p=page, c=count: p.here() == c)
    ok("presence: alice and bob see 2 in the lobby, carol 1 in the garden")

    tag = uuid.uuid4().hex[:8]
    # Markup must arrive as text, and the non-ASCII (BMP only: chromedriver types nothing else;
    # Latin and symbols, which the default fonts draw in the screenshots) must survive the page's
    # UTF-8 + base64 both ways.
    said = f"hi bob, café at 5? ✓ <b>not bold</b> {tag}"
    alice.send(said, press_enter=True)
    line = f"alice: {said}"
    bob.wait_for("alice's message", lambda: line in bob.messages())
    ok("bob received alice's message (Enter sends)")
    alice.wait_for("her own message back", lambda: line in alice.messages())
    ok("alice received her own message")
    if bob.driver.find_elements(By.CSS_SELECTOR, "#messages b"):
        raise CheckFailed("bob: alice's <b> became markup (the page must use textContent)")
    ok("the markup in alice's message stayed text")

    carol_said = f"carol in the garden {tag}"
    carol.send(carol_said, press_enter=False)
    carol.wait_for("her own message back", lambda: f"carol: {carol_said}" in carol.messages())
    ok("carol received her own message in garden (the send button sends)")
    if line in carol.messages():
        raise CheckFailed("carol (room garden) received alice's message to lobby")
    ok("carol did not receive alice's lobby message")

    bob_said = f"hello alice {tag}"
    bob.send(bob_said, press_enter=True)
    alice.wait_for("bob's reply", lambda: f"bob: {bob_said}" in alice.messages())
    ok("alice received bob's reply")
    for page in (alice, bob):
        if f"carol: {carol_said}" in page.messages():
            raise CheckFailed(f"{page.who} (room lobby) received carol's message to garden")
    ok("alice and bob did not receive carol's garden message")

    dave = open_page("dave", "lobby")
    pages.append(dave)
    dave.wait_for("#status 'joined lobby'", lambda: dave.status() == "joined lobby")
    for said_before in (line, f"bob: {bob_said}"):
        dave.wait_for(f"{said_before!r} in the history",
                      lambda s=said_before: s in dave.messages(".message.history"))
    ok("dave joined the lobby and his page shows alice's and bob's messages as its history")
    alice.wait_for("3 here", lambda: alice.here() == "3")
    dave.quit()
    pages.remove(dave)
    alice.wait_for("2 here after dave left", lambda: alice.here() == "2")
    ok("alice saw dave join (3 here) and leave (2 here): presence events")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--page", required=True, help="http URL of examples/chat/index.html")
    parser.add_argument("--ws", required=True, help="ws URL of the chat listener")
    parser.add_argument("--shots", required=True, type=Path, help="directory for the screenshots")
    parser.add_argument("--timeout", type=float, default=20, help="seconds per wait (default 20)")
    parser.add_argument("--token", help="the listener's auth_token, if it has one")
    args = parser.parse_args()
    args.shots.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()

    def open_page(who, room):
        query = {"ws": args.ws, "room": room, "name": who}
        if args.token:
            query["token"] = args.token
        sep = "&" if "?" in args.page else "?"
        return Page(who, room, f"{args.page}{sep}{urlencode(query)}", args.timeout)

    pages = []
    try:
        for who, room in PEOPLE:
            pages.append(open_page(who, room))
    except WebDriverException as e:
        for page in pages:
            page.quit()
        print(
            f"FAIL could not start headless Chromium ({CHROMIUM}, {CHROMEDRIVER})"
            f" or load the page: {e.msg}"
        )
        return 2

    failure = None
    try:
        run(pages, open_page)
    except (CheckFailed, WebDriverException) as e:
        failure = e.msg if isinstance(e, WebDriverException) else str(e)
    finally:
        for page in pages:
            try:
                page.driver.save_screenshot(str(args.shots / f"chat-{page.who}.png"))
            except WebDriverException:
                pass
        if failure is not None:
            print(f"FAIL {failure}")
            for page in pages:
                try:
                    print(f"  {page.who}: #status {page.status()!r}, messages {page.messages()!r}")
                except WebDriverException as e:
                    print(f"  {page.who}: page unreadable: {e.msg}")
                for entry in page.console():
                    print(f"    console: {entry}")
        for page in pages:
            page.quit()

    if failure is not None:
        return 1
    took = time.monotonic() - started
    ok(f"screenshots in {args.shots}/chat-{{alice,bob,carol}}.png (all checks in {took:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
