#!/usr/bin/env python3
"""Seed a running backend with realistic demo data (for UI development).

    uv run python scripts/seed_demo.py --api http://localhost:3000 --token "$AGENT_TOKEN"

Three classes, ~30 students, two or three assignments each: C sources growing save by save,
gcc builds with real-looking diagnostics (some students stuck on one error, some pasting
large blocks), program runs (a few crash with SIGSEGV/SIGABRT, some stopped with ^C) and,
for the Python class, notebook cells. Deterministic for a given --seed; event ids are new
on every call, so seeding twice doubles the data.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

from watcher_backend.demo_data import EventFactory, diag

CLASSES = {"os-1": ("hw1", "hw2", "hw3"), "data-structure-2": ("hw1", "hw2"), "ai-1": ("hw1",)}
ERRORS = [
    ("‘{v}’ undeclared (first use in this function)", None),
    ("expected ‘;’ before ‘{k}’", None),
    ("implicit declaration of function ‘{f}’", "warning"),
    ("too few arguments to function ‘{f}’", None),
    ("incompatible types when assigning to type ‘int’ from type ‘char *’", None),
    ("expected declaration or statement at end of input", None),
    ("control reaches end of non-void function", "warning"),
    ("unused variable ‘{v}’", "warning"),
]
NAMES = ["count", "total", "node", "head", "buf", "len", "i", "tmp"]
FUNCS = ["push", "pop", "insert", "print_list", "fork_child", "read_input"]
KEYWORDS = ["return", "}", "printf", "if"]
SNIPPET = "    for (int i = 0; i < n; i++) {{\n        total += a[i] * {k};\n    }}\n"


def source(lines: int, seed: int) -> bytes:
    body = "".join(SNIPPET.format(k=(seed + j) % 7) for j in range(lines))
    return f"#include <stdio.h>\n\nint main(void) {{\n    int total = 0;\n{body}}}\n".encode()


def student_events(
    f: EventFactory, rng: random.Random, sid: str, hw: str, start: datetime, python: bool
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    t = start
    size = rng.randint(1, 4)
    stuck = rng.random() < 0.15
    paster = rng.random() < 0.1
    for step in range(rng.randint(8, 40)):
        t += timedelta(seconds=rng.choice([5, 20, 45, 90, 240, 1500]))
        size += 12 if paster and step == 3 else rng.randint(0, 2)
        if python:
            ok = rng.random() > 0.25
            out.append(f.cell(sid, hw, t, step, ok=ok, source=f"total = sum(range({step}))"))
            continue
        out.append(f.save(sid, hw, "main.c", t, source(size, step)))
        if rng.random() < 0.6:
            t += timedelta(seconds=rng.randint(2, 15))
            failing = (stuck and step < 6) or rng.random() < 0.35
            diags = []
            if failing:
                text, _ = ERRORS[0] if stuck else rng.choice([e for e in ERRORS if e[1] is None])
                msg = text.format(v=rng.choice(NAMES), k=rng.choice(KEYWORDS), f=rng.choice(FUNCS))
                diags.append(diag(msg, rng.randint(3, 30), 5))
            if rng.random() < 0.3:
                text, _ = rng.choice([e for e in ERRORS if e[1] == "warning"])
                diags.append(diag(text.format(v=rng.choice(NAMES), f=rng.choice(FUNCS)),
                                  rng.randint(3, 30), 9, severity="warning"))  # fmt: skip
            out.append(f.build(sid, hw, t, diags))
            if not failing:
                t += timedelta(seconds=rng.randint(1, 10))
                roll = rng.random()
                signal = 11 if roll < 0.12 else 6 if roll < 0.15 else 2 if roll < 0.2 else None
                out.append(f.run(sid, hw, t, signal=signal, exit_code=rng.choice([0, 0, 0, 1])))
    return out


def post(api: str, token: str, events: list[dict[str, Any]]) -> None:
    for i in range(0, len(events), 500):
        body = json.dumps({"events": events[i : i + 500]}).encode()
        if not api.startswith(("http://", "https://")):
            sys.exit("--api must be an http(s) URL")
        req = urllib.request.Request(  # noqa: S310 (scheme checked above)
            f"{api.rstrip('/')}/api/v1/events",
            data=body,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310
            results = json.load(resp)["results"]
        bad = [r for r in results if r["status"] not in ("stored", "duplicate")]
        if bad:
            sys.exit(f"rejected: {bad[:3]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--api", default="http://localhost:3000")
    p.add_argument("--token", required=True, help="an agent (or admin) token")
    p.add_argument("--students", type=int, default=10, help="per class (default 10)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rng = random.Random(args.seed)
    monday = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)  # 09:00 in Seoul
    total = 0
    for class_div, hws in CLASSES.items():
        f = EventFactory(class_div)
        events: list[dict[str, Any]] = []
        for _ in range(args.students):
            sid = f"2025{rng.randint(10000, 99999)}"
            for w, hw in enumerate(hws):
                if rng.random() < 0.1:
                    continue  # did not start this assignment
                start = monday + timedelta(days=7 * w + rng.randint(0, 6), hours=rng.randint(0, 14))
                events += student_events(f, rng, sid, hw, start, python=class_div == "ai-1")
        post(args.api, args.token, events)
        total += len(events)
        print(f"{class_div}: {len(events)} events")
    print(f"seeded {total} events")


if __name__ == "__main__":
    main()
