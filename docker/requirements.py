"""Print the requirements of verse-gc extras, read from pyproject.toml (the one list of dependencies).

Used by the Dockerfile to install dependencies in a layer of their own, before the code is
copied, so that editing code does not re-download them:

    python requirements.py pyproject.toml algorithm-gpu > requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

SELF = re.compile(r"^verse-gc\[(?P<extras>[^\]]+)\]$")


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """Base dependencies plus those of ``extras``, self-references (``verse-gc[x]``) expanded."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"requirements.py: {pyproject}: no extra named {extra!r}")
        seen.add(extra)
        for requirement in optional[extra]:
            match = SELF.match(requirement.replace(" ", ""))
            if match:
                pending.extend(match.group("extras").split(","))
            elif requirement not in out:
                out.append(requirement)
    return out


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit("usage: python requirements.py PYPROJECT EXTRA [EXTRA ...]")
    print("\n".join(requirements(Path(sys.argv[1]), sys.argv[2:])))
