"""A terminal of the tests' own: one tmux server on a private socket, one session of a fixed
size, its whole pane read back with the scrollback."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path


class Terminal:
    """One tmux server of our own (its own socket), one session of a fixed size."""

    def __init__(self, tmp: Path, width: int) -> None:
        self.socket = str(tmp / f"tmux-{width}")
        self.width = width

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", self.socket, "-f", "/dev/null", *args],
            capture_output=True, text=True, check=True, timeout=20,
        )  # fmt: skip
        return done.stdout

    def start(self, command: str, env: dict[str, str], cwd: Path) -> None:
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        script = f"cd {shlex.quote(str(cwd))} && env {exports} {command}; echo EXITED=$?; sleep 600"
        self.tmux("new-session", "-d", "-s", "t", "-x", str(self.width), "-y", "45", script)

    def capture(self, escapes: bool = False) -> str:
        """The whole pane, scrollback included; with `escapes`, colour codes kept."""
        return self.tmux("capture-pane", "-p", "-t", "t", "-S", "-", *(["-e"] if escapes else []))

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=20)
