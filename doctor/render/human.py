"""Human output: a line per check (✓ ! ✗), details under failures, everything with -v. Plain off a TTY."""

from __future__ import annotations

import json
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape

MAX_SHOWN = 6  # per check without -v: the rest is one line away

_MARK = {"ok": ("✓", "green"), "info": ("•", "cyan"), "skip": ("-", "dim"), "warn": ("!", "yellow"),
         "fail": ("✗", "red"), "error": ("☠", "magenta")}


def render(doc: dict[str, Any], stream: TextIO, verbose: bool = False) -> None:
    console = Console(file=stream, highlight=False, soft_wrap=True)
    width = max((len(c["name"]) for c in doc["checks"]), default=8)
    for check in doc["checks"]:
        mark, colour = _MARK[check["status"]]
        head = _headline(check)
        console.print(f"[{colour}]{mark}[/] [bold]{escape(check['name']).ljust(width)}[/]  {escape(head)}")
        shown = [f for f in check["findings"] if verbose or f["severity"] in ("warn", "fail", "error")]
        hidden = len(shown) - MAX_SHOWN if not verbose and len(shown) > MAX_SHOWN else 0
        for f in shown[: len(shown) - hidden]:
            fm, fc = _MARK[f["severity"]]
            console.print(f"    [{fc}]{fm}[/] {escape(f['title'])}  [dim]({escape(f['id'])})[/]")
            if f["cause"]:
                console.print(f"      why: {escape(f['cause'])}")
            if verbose and f["evidence"]:
                console.print(f"      seen: {escape(json.dumps(f['evidence'], default=str))}", style="dim")
            remedy = f.get("remedy") or {}
            if remedy.get("command"):
                console.print(f"      fix: [bold]{escape(remedy['command'])}[/]")
            if remedy.get("fix_id") and not (remedy.get("command") or "").startswith("m3d-doctor fix "):
                console.print(f"      or:  m3d-doctor fix {escape(remedy['fix_id'])}", style="dim")
        if hidden:
            console.print(f"    … {hidden} more (m3d-doctor check {escape(check['name'])} -v)", style="dim")
    s = doc["summary"]
    bad = s["checks"]["fail"] + s["checks"]["error"]
    line = (f"{bad} check(s) found problems" if bad else
            f"no failures ({s['checks']['warn']} with warnings)" if s["checks"]["warn"] else "no issues found")
    console.print(f"\n{escape(line)} · profile {escape(doc['profile']['name'])} · "
                  f"{s['duration_s']:.2f}s · exit {s['exit_code']}")
    if bad:
        console.print("the fixes as one plan: m3d-doctor fix --dry-run", style="dim")


def _headline(check: dict[str, Any]) -> str:
    worst = [f for f in check["findings"] if f["severity"] == check["status"]]
    if not worst:
        return check["description"]
    if len(worst) == 1:
        return worst[0]["title"]
    return f"{len(worst)} {check['status']} findings: {worst[0]['title']} …"
