"""Regenerate every tools/report.py block of README.md from the committed results (what tests/test_readme.py
checks): each block is the output of the command in its opening comment.

    python tools/readme_reports.py [--check]
"""
import contextlib
import io
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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    readme = REPO / "README.md"
    text = readme.read_text()
    new = regenerate(text)
    if "--check" in argv:
        return int(new != text)
    readme.write_text(new)
    print(f"{len(BLOCK.findall(text))} report blocks of {readme} regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
