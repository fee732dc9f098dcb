#!/usr/bin/env python3
"""Drives clients/js/wsgateway.js in two headless Chromium pages against the real provider.

Run by tests/browser_client.rs, which starts the provider (a listener with JWTs, history,
presence, presence events and client publish), plays the component, and answers on this
script's stdin. ann connects with her token as a subprotocol, ben with his in the query. The
checks: subscribe with history, presence, a refused subscribe, request (answered, and timed
out), client publish, then a broadcast of --messages during which the test closes ann's
connection: both pages must get every message once, in order, ann after a reconnect with
recovery; last, ben leaves and ann is told.

Protocol with the test: this script prints `ready broadcast`; the test broadcasts and prints
`done` on its stdin. Prints one line per check; exits 0 when all pass, 1 on a failed check, 2
when the browser cannot be started.
"""

import argparse
import functools
import http.server
import json
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

from headless import HeadlessPage
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[2]


class CheckFailed(Exception):
    pass


def ok(line):
    print(f"ok   {line}", flush=True)


def serve_repository():
    """The repository over http on a free port (the page and the library), in a thread."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(ROOT))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


class Page(HeadlessPage):

    def record(self):
        return self.driver.execute_script("return window.record || null;")

    def call(self, name, *args):
        return self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            f"Promise.resolve(window.calls.{name}(...Array.from(arguments).slice(0, -1))).then(done);",
            *args,
        )

    def wait_for(self, what, condition):
        try:
            WebDriverWait(self.driver, self.timeout, poll_frequency=0.1).until(lambda _: condition())
        except TimeoutException:
            record = self.record() or {}
            brief = {k: (v if not isinstance(v, list) or len(v) < 12 else f"{len(v)} items, last {v[-3:]}")
                     for k, v in record.items()}
            raise CheckFailed(f"{self.who}: {what} not within {self.timeout:g} s; record {brief}") from None


def run(ann, ben, messages):
    for page in (ann, ben):
        page.wait_for("both subscriptions answered", lambda p=page: (p.record() or {}).get("ready"))
    ok("ann (token as subprotocol) and ben (token in the query) subscribed")
    if not ann.driver.execute_script("return window.matchesWorks;"):
        raise CheckFailed("the library's pattern matching is wrong")

    answer = ann.call("presence", "news.a")
    users = sorted(m["user"] for m in answer.get("members", []))
    if users != ["ann", "ben"]:
        raise CheckFailed(f"presence of news.a: {answer}")
    ok("presence of news.a lists ann and ben")

    refused = ann.call("refused", "secret.x")
    if "not allowed to subscribe" not in refused.get("error", ""):
        raise CheckFailed(f"a subscribe outside ann's JWT was not refused: {refused}")
    ok(f"a subscribe outside the JWT is refused: {refused['error']}")

    reply = ann.call("request", "ask.q", "q", 5000)
    if reply.get("text") != "answer: q":
        raise CheckFailed(f"request: {reply}")
    ok("request answered by the component")
    timed_out = ann.call("request", "ask.q", "q", 1)
    if "timed out after 1 ms" not in timed_out.get("error", ""):
        raise CheckFailed(f"request with a 1 ms timeout: {timed_out}")
    ok("request with a 1 ms timeout rejects")

    ann.call("publish", "room.1", "hello ben")
    ben.wait_for("ann's client publish", lambda: "hello ben" in ben.record()["room"])
    ok("ann's publish reached ben directly (client_publish)")

    print("ready broadcast", flush=True)
    line = sys.stdin.readline().strip()
    if line != "done":
        raise CheckFailed(f"the test said {line!r}, not done")
    expected = [str(i) for i in range(messages)]
    for page in (ann, ben):
        page.wait_for(f"all {messages} broadcasts",
                      lambda p=page: len(p.record()["news"]) >= messages)
        record = page.record()
        bodies = [m["body"] for m in record["news"]]
        if bodies != expected:
            missing = sorted(set(expected) - set(bodies), key=int)
            raise CheckFailed(f"{page.who}: {len(bodies)} broadcasts, not 0..{messages - 1} once in order; missing {missing[:10]}")
        offsets = [m["offset"] for m in record["news"]]
        if offsets != sorted(set(offsets)):
            raise CheckFailed(f"{page.who}: offsets not rising: {offsets[:20]}")
    record = ann.record()
    if record["reconnects"] < 1 or "reconnecting" not in record["states"]:
        raise CheckFailed(f"ann did not reconnect: states {record['states']}")
    if record["recovered"][-1:] != [True]:
        raise CheckFailed(f"ann's recovery: {record['recovered']}")
    ok(f"ann reconnected during the broadcast and both got all {messages}, in order, once "
       f"(ann's states {record['states']}, recovered {record['recovered']})")

    ben.call("close")
    ann.wait_for("ben's leave", lambda: any(m.get("user") == "ben" for m in ann.record()["left"]))
    ok("ben closed; ann was told he left news.>")
    errors = ann.record()["errors"]
    if errors:
        raise CheckFailed(f"ann's page reported errors: {errors}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ws", required=True)
    parser.add_argument("--ann-token", required=True)
    parser.add_argument("--ben-token", required=True)
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--timeout", type=float, default=30)
    args = parser.parse_args()
    base = serve_repository()
    pages = []
    try:
        for who, token, token_in in (("ann", args.ann_token, "protocol"), ("ben", args.ben_token, "query")):
            query = urlencode({"ws": args.ws, "token": token, "tokenIn": token_in, "name": who})
            pages.append(Page(who, f"{base}/tests/browser/client.html?{query}", args.timeout))
    except WebDriverException as e:
        for page in pages:
            page.quit()
        print(f"FAIL could not start headless Chromium or load the page: {e.msg}")
        return 2
    started = time.monotonic()
    try:
        run(*pages, args.messages)
    except (CheckFailed, WebDriverException) as e:
        print(f"FAIL {e.msg if isinstance(e, WebDriverException) else e}")
        for page in pages:
            print(f"  {page.who} console: {json.dumps(page.console()[-10:])}")
        return 1
    finally:
        for page in pages:
            page.quit()
    print(f"all checks passed in {time.monotonic() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
