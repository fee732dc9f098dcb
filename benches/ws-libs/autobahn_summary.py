#!/usr/bin/env python3
"""Summarises an Autobahn|Testsuite client report (reports/clients/index.json) per agent:
counts of each result, overall and for the case groups 1-11, 12 and 13, and the ids of the
cases that did not pass, with consecutive cases written as ranges."""

import json
import sys
from collections import Counter

RESULTS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
GROUPS = [("1-11", lambda major: major <= 11), ("12", lambda major: major == 12),
          ("13", lambda major: major == 13)]


def key(case):
    return tuple(int(part) for part in case.split("."))


def ranges(cases, selected):
    """`selected` (a subset of the ordered `cases`) as runs like 12.1.1-12.5.18."""
    runs, start, prev = [], None, None
    for case in cases + [None]:
        if case in selected:
            start = start or case
            prev = case
        elif start:
            runs.append(start if start == prev else f"{start}-{prev}")
            start = None
    return ", ".join(runs) or "-"


def main(path, agents):
    with open(path) as f:
        index = json.load(f)
    for agent in agents or sorted(index):
        results = index.get(agent)
        if results is None:
            print(f"{agent}: no results in {path}\n")
            continue
        cases = sorted(results, key=key)
        seconds = sum(r.get("duration", 0) for r in results.values()) / 1000
        print(f"{agent}: {len(cases)} cases, {seconds:.0f}s of case time")
        print(f"  {'group':<8}" + "".join(f"{r:>15}" for r in RESULTS))
        for name, member in [("all", lambda major: True)] + GROUPS:
            counts = Counter(results[c]["behavior"] for c in cases if member(key(c)[0]))
            print(f"  {name:<8}" + "".join(f"{counts[r]:>15}" for r in RESULTS))
        for result in ["FAILED", "UNIMPLEMENTED", "NON-STRICT", "INFORMATIONAL"]:
            selected = {c for c in cases if results[c]["behavior"] == result}
            if selected:
                print(f"  {result}: {ranges(cases, selected)}")
        close_failed = {c for c in cases if results[c]["behaviorClose"] == "FAILED"}
        if close_failed:
            print(f"  closing handshake FAILED: {ranges(cases, close_failed)}")
        print()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: autobahn_summary.py <index.json> [agent...]")
    main(sys.argv[1], sys.argv[2:])
