"""The command list in the README and the commands `adaptflow --help` shows are the same set."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands() -> dict[str, set[str]]:
    """{command: {subcommands}} from the README's `## Commands` table rows, `| \\`adaptflow NAME ...\\` |`."""
    section = README.read_text(encoding="utf-8").split("## Commands", 1)[1].split("\n## ", 1)[0]
    out: dict[str, set[str]] = {}
    for cell in re.findall(r"^\| `adaptflow ([a-z][^`]*)`", section, flags=re.MULTILINE):
        name, _, rest = cell.partition(" ")
        subs = re.fullmatch(r"([a-z]+(?: / [a-z]+)+)", rest.strip())
        out[name] = set(subs.group(1).split(" / ")) if subs else set()
    return out


def help_commands(*args: str) -> set[str]:
    """The command names in `adaptflow ARGS --help`, run as a user runs it (a fresh process)."""
    env = dict(os.environ, PYTHONPATH=str(README.parent))
    text = subprocess.run([sys.executable, "-m", "flows.cli", *args, "--help"], capture_output=True, text=True,
                          env=env, check=True).stdout
    block = text.split("Commands:", 1)[1]
    return {m.group(1) for m in re.finditer(r"^  ([a-z][a-z-]*)\s", block, flags=re.MULTILINE)}


def test_every_readme_command_is_mounted_and_every_mounted_command_is_in_the_readme():
    documented = readme_commands()
    assert {"run", "compare", "ui", "registry", "query", "serve"} <= set(documented)  # the table was found
    assert help_commands() == set(documented)
    for name, subs in documented.items():
        if subs:
            assert help_commands(name) == subs, name
