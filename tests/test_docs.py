"""The documentation runs: every fenced ``bash``, ``sh`` and ``python`` block of README.md and docs/*.md is executed,
in order, so a command or snippet that drifts from the code fails CI.

The convention (also in docs/architecture.md, "Documentation is tested"):

* Blocks tagged ``bash``, ``sh`` or ``python`` run; any other tag (``console``, ``text``, ``yaml``, none) is not run.
* ``<!-- doctest: skip REASON -->`` on the line before a block skips it; only for what CI cannot do (a cluster,
  Docker, a benchmark that takes an hour), and the reason is in the Markdown for readers to see.
* ``<!-- doctest: server -->`` before a one-line block ``... styletx-server ... &`` runs that command as the server
  the following blocks of the file talk to: in the background, until it answers health checks, stopped after the
  file's last block; ``STYLETX_SERVER`` points at it for those blocks (as if the reader had exported it).
* The blocks run in a scratch directory that mirrors the checkout (symlinks), so their outputs never land in it;
  bash with ``set -euo pipefail``, python with this interpreter. ``STYLETX_HOST=127.0.0.1`` and
  ``STYLETX_METRICS_PORT=0`` are set for them.
* Small sizes, by substitution (:data:`SUBSTITUTIONS`): ``--size N`` and ``size=N`` become 64, ``bash
  scripts/demo.sh`` and ``styletx stylize`` get ``--size 64``, and port 50051 becomes a free port.
* Never run (:data:`NEVER_RUN`): ``bash scripts/test.sh`` (CI's entry point runs this test; it would recurse).

Slow (about two minutes on two cores: a demo run, two servers start-ups, several small jobs).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = {"bash": "bash", "sh": "bash", "python": "python"}
SMALL = 64
SUBSTITUTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"--size \d+"), f"--size {SMALL}"),
    (re.compile(r"\bsize=\d+"), f"size={SMALL}"),
    (re.compile(r"(bash scripts/demo\.sh|styletx stylize)(?=\s|$)", re.MULTILINE), rf"\1 --size {SMALL}"),
)
NEVER_RUN = {"bash scripts/test.sh": "CI's entry point, which runs this test"}
#: Not mirrored into the scratch directory: what the blocks write must not touch the checkout.
_NOT_MIRRORED = {".git", "out", "build"}
_BACKGROUND = re.compile(r"^(?P<command>[^\n#]*?)\s*&\s*(#[^\n]*)?\n?$")
_DIRECTIVE = re.compile(r"<!--\s*doctest:\s*(skip|server)\b\s*(.*?)\s*-->", re.DOTALL)
BLOCK_TIMEOUT = 240


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its text and the directive above it."""

    path: Path
    line: int
    language: str
    text: str
    directive: str = ""
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line} ({self.language})"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of ``path``, each with the ``doctest:`` comment just before it, if any."""
    found: list[Block] = []
    directive = reason = ""
    for token in MarkdownIt("commonmark").parse(path.read_text()):
        if token.type == "html_block" and (match := _DIRECTIVE.search(token.content)):
            directive, reason = match.group(1), match.group(2)
            continue
        if token.type == "fence":
            language = token.info.split()[0] if token.info.strip() else ""
            line = token.map[0] + 1 if token.map else 0
            found.append(Block(path, line, language, token.content, directive, reason))
        directive = reason = ""
    return found


def test_directives_are_well_formed() -> None:
    """A skip says why; a server block is one background command; every doc has been looked at."""
    for path in DOCS:
        for block in blocks(path):
            if block.directive == "skip":
                assert block.reason, f"{block}: `doctest: skip` needs a reason"
            if block.directive == "server":
                assert _BACKGROUND.match(block.text.strip()), f"{block}: a server block is one command ending in &"


def prepared(block: Block, port: int) -> str:
    """The block's text as it runs: small sizes, the test port, the lines CI must not run removed."""
    text = block.text
    for pattern, replacement in SUBSTITUTIONS:
        text = pattern.sub(replacement, text)
    text = re.sub(r"\b50051\b", str(port), text)
    for command, why in NEVER_RUN.items():
        text = re.sub(rf"^{re.escape(command)}\b.*$", f": {shlex.quote('not run: ' + why)}", text,
                      flags=re.MULTILINE)
    return text


def venv_is_current() -> bool:
    """What scripts/bootstrap.sh checks: installed after the last change of either pyproject.toml."""
    stamps = [ROOT / ".venv" / f".styletx-installed-{kind}" for kind in ("dev", "server")]
    newest = max((ROOT / name).stat().st_mtime for name in ("pyproject.toml", "client/pyproject.toml"))
    return any(stamp.is_file() and stamp.stat().st_mtime >= newest for stamp in stamps)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A directory that looks like the checkout (symlinks) but keeps the blocks' outputs to itself."""
    # The demo block runs bootstrap.sh, which would reinstall a stale .venv from the scratch paths (and point its
    # scripts at them); CI's test.sh bootstraps right before the tests, so only a local run can get here.
    assert venv_is_current(), ".venv is older than pyproject.toml: run `bash scripts/bootstrap.sh dev` first"
    for entry in ROOT.iterdir():
        if entry.name not in _NOT_MIRRORED:
            (tmp_path / entry.name).symlink_to(entry)
    return tmp_path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Session:
    """The blocks of one file, run in order in ``work``, with the server a ``doctest: server`` block starts."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.env = {**os.environ, "STYLETX_HOST": "127.0.0.1", "STYLETX_METRICS_PORT": "0",
                    "PYTHONUNBUFFERED": "1"}
        self.server: subprocess.Popen[str] | None = None
        self.log = work / "server.log"

    def run(self, block: Block) -> str:
        """Run one block; returns "" when it passed, else what went wrong with its output."""
        text = prepared(block, self.port)
        if block.directive == "server":
            return self.start_server(text)
        command = ["bash", "-euo", "pipefail", "-c", text] if RUN[block.language] == "bash" else \
            [sys.executable, "-c", text]
        started = time.monotonic()
        try:
            result = subprocess.run(command, cwd=self.work, env=self.env, capture_output=True, text=True,
                                    timeout=BLOCK_TIMEOUT, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"{block}: still running after {BLOCK_TIMEOUT}s\n--- ran:\n{text}"
        print(f"ran {block} in {time.monotonic() - started:.1f} s")
        if result.returncode != 0:
            return f"{block}: exit status {result.returncode}\n--- ran:\n{text}\n--- output (tail):\n" \
                   f"{(result.stdout + result.stderr)[-3000:]}"
        return ""

    def start_server(self, text: str) -> str:
        from styletx_client import Client

        match = _BACKGROUND.match(text.strip())
        assert match, text
        command = "exec " + match.group("command")
        with self.log.open("w") as log:
            self.server = subprocess.Popen(["bash", "-c", command], cwd=self.work, env=self.env, stdout=log,
                                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = time.monotonic() + BLOCK_TIMEOUT
        with Client(f"127.0.0.1:{self.port}", retry=None) as client:
            while time.monotonic() < deadline and self.server.poll() is None:
                try:
                    if client.health(timeout=2) == "SERVING":
                        self.env["STYLETX_SERVER"] = f"127.0.0.1:{self.port}"  # as if the reader exported it
                        return ""
                except Exception:  # not listening yet
                    time.sleep(0.5)
        return f"server `{text.strip()}` did not become SERVING:\n{self.log.read_text()[-3000:]}"

    def close(self) -> None:
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait()


@pytest.fixture
def session(scratch: Path) -> Iterator[Session]:
    running = Session(scratch)
    yield running
    running.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_documented_commands_run(path: Path, session: Session) -> None:
    """Each runnable block of the file, in order; every failure is reported, not only the first."""
    runnable = [b for b in blocks(path) if b.language in RUN]
    failures: list[str] = []
    for block in runnable:
        if block.directive == "skip":
            print(f"skipped {block}: {block.reason}")
            continue
        if problem := session.run(block):
            failures.append(problem)
            if block.directive == "server":
                break  # the rest of the file needs it
    assert not failures, "\n\n".join(failures)
