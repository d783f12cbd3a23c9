"""Regenerate every tools/report.py block of README.md and docs/*.md from the committed results (what
tests/test_readme.py checks): each block is the output of the command in its opening comment.

    python tools/readme_reports.py [--check]

Run it whenever a run lands in results/; --check exits 1, writing nothing, when a block is out of date.
"""
import contextlib
import io
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tools import report  # noqa: E402

# A block's text stops at the first end marker and never runs into the next block's opening comment, so that an
# empty block (a new section's) is filled without swallowing what follows it.
BLOCK = re.compile(r"(<!-- (python tools/report\.py [^;]*); tests/test_readme\.py keeps it current -->\n)"
                   r"((?:(?!<!-- python tools/report\.py).)*?)\n?(<!-- end of report -->)", re.S)


def regenerate(text):
    def output(match):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            report.main(match.group(2).split()[2:])
        return match.group(1) + buffer.getvalue().rstrip("\n") + "\n" + match.group(4)
    return BLOCK.sub(output, text)


def pages():
    """The pages that hold report blocks: the front page and every page of docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    os.chdir(REPO)  # the blocks' commands name paths relative to the repository
    stale = []
    for page in pages():
        text = page.read_text()
        new = regenerate(text)
        if new == text:
            continue
        stale.append(page)
        if "--check" not in argv:
            page.write_text(new)
    if "--check" in argv:
        print("\n".join(f"out of date: {page.relative_to(REPO)}" for page in stale))
        return int(bool(stale))
    print(f"{len(stale)} of {len(pages())} pages regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
