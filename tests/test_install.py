"""What a newcomer runs first (issue 20): the README's two commands, and CI running the same."""
from __future__ import annotations

import re

from conftest import ROOT


def _readme_commands() -> list[str]:
    """The commands of the README's first code block, without their comments."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readmes_test_command_as_written():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    test_command = next(c for c in commands if c.endswith("pytest"))
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci, (test_command, ci)
    # and CI runs no other pytest: the README's command is the whole suite CI passes on
    assert [line for line in ci if "pytest" in line and not line.startswith("#")] == [test_command]
