"""The shell blocks of README.md and docs/*.md, so that tests run the documented commands as written.

Every ```bash block carries a marker on the line before its fence, saying who runs it:

    <!-- doc-test: tests/test_docs.py::test_magvit_recipe -->   a test reads this block and runs it
    <!-- doc-test: cloud (needs a GCP project) -->              needs real cloud resources; not run here

`tests/test_docs.py` checks that every block has one and that each named test exists and reads its block
(`doc_block(PATH, TEST)`). A test runs a block with `run_block`: the block's text, with the substitutions the
test names (a preset for a tiny one, a path for a temporary directory, a port), in bash with `set -euo pipefail`
and the project's `.venv/bin` first on PATH, as a user's shell would have it after `bash scripts/install.sh`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")))
MARKER = re.compile(r"<!--\s*doc-test:\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")
SHELL_LANGUAGES = ("bash", "sh", "shell")


@dataclass(frozen=True)
class ShellBlock:
    path: str  # relative to the repository
    line: int  # 1-based line of the opening fence
    marker: (
        str | None
    )  # what the doc-test marker says ("tests/x.py::test_y" or "cloud (...)"); None: no marker
    text: str

    @property
    def test(self) -> str | None:
        """The test that runs this block ("tests/x.py::test_y"), None for a cloud block or no marker."""
        return self.marker if self.marker and "::" in self.marker and not self.is_cloud else None

    @property
    def is_cloud(self) -> bool:
        return bool(self.marker) and self.marker.startswith("cloud")


def shell_blocks(path: str) -> list[ShellBlock]:
    """Every fenced shell block of one markdown file, with the doc-test marker on the line before it."""
    lines = (REPO / path).read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        if fence.group(1) in SHELL_LANGUAGES:
            marker = MARKER.search(lines[i - 1]) if i else None
            blocks.append(
                ShellBlock(path, i + 1, marker.group(1) if marker else None, "\n".join(lines[i + 1 : end]))
            )
        i = end + 1
    return blocks


def all_shell_blocks() -> list[ShellBlock]:
    return [block for path in DOCS for block in shell_blocks(path)]


def doc_block(path: str, test: str) -> ShellBlock:
    """The one block of `path` whose marker names `test` (e.g. "tests/test_docs.py::test_magvit_recipe")."""
    found = [b for b in shell_blocks(path) if b.test == test]
    if len(found) != 1:
        raise LookupError(f"{path} has {len(found)} blocks marked `<!-- doc-test: {test} -->`, want 1")
    return found[0]


def substitute(text: str, substitutions: dict[str, str]) -> str:
    """`text` with each key replaced by its value; a key the text does not hold is an error (the doc changed
    and the test no longer runs what it says)."""
    for old, new in substitutions.items():
        if old not in text:
            raise AssertionError(f"the documented block no longer contains {old!r}:\n{text}")
        text = text.replace(old, new)
    return text


def venv_env(**extra: str) -> dict[str, str]:
    """This process's environment with the project's virtualenv first on PATH (`phenaki`, `ray`)."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def run_block(
    block: ShellBlock, substitutions: dict[str, str], cwd: Path, env: dict[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:  # fmt: skip
    """Run the block (after `substitute`) in bash -euo pipefail; asserts it exited 0, returns the process."""
    script = "set -euo pipefail\n" + substitute(block.text, substitutions)
    proc = subprocess.run(["bash", "-c", script], cwd=cwd, env=env or venv_env(), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, (
        f"{block.path}:{block.line} exited {proc.returncode}\n--- script\n{script}\n--- stdout\n"
        f"{proc.stdout[-5000:]}\n--- stderr\n{proc.stderr[-5000:]}"
    )
    return proc
