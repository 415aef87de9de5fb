"""Human rendering of fix plans and their outcome; computes nothing."""

from __future__ import annotations

from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape

from ..units import human

_RISK = {"safe": "green", "risky": "yellow", "destructive": "red"}


def human_bytes(n: int | None) -> str:
    return "" if n is None else human(n)


def render(plans: list[dict[str, Any]], stream: TextIO) -> None:
    console = Console(file=stream, highlight=False, soft_wrap=True)
    if not plans:
        console.print("nothing to fix")
        return
    for plan in plans:
        colour = _RISK[plan["risk"]]
        console.print(f"[bold]{escape(plan['fix_id'])}[/]  [{colour}]{plan['risk']}[/]"
                      + (f"  (for {', '.join(plan['findings'])})" if plan["findings"] else ""))
        if plan["blocked"]:
            console.print(f"    [red]blocked:[/] {escape(plan['blocked'])}")
        for note in plan["notes"]:
            console.print(f"    note: {escape(note)}", style="dim")
        for a in plan["actions"]:
            size = f" [{human_bytes(a['bytes'])}]" if a["bytes"] is not None else ""
            console.print(f"    [{_RISK[a['risk']]}]•[/] {escape(a['description'])}{size}")
            if a["command"]:
                console.print(f"      $ {escape(a['command'])}", style="dim")
        if not plan["actions"] and not plan["blocked"]:
            console.print("    nothing to do")


def message(text: str, stream: TextIO) -> None:
    Console(file=stream, highlight=False, soft_wrap=True).print(escape(text))
