"""JSON Lines reading with errors that point at the bad line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_jsonl(path: Path, error: type[Exception] = ValueError) -> list[tuple[int, Any]]:
    """``(line number, value)`` for each non-blank line; a malformed line raises ``error`` naming file:line."""
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((line_no, json.loads(line)))
        except json.JSONDecodeError as err:
            raise error(f"{path}:{line_no}: not valid JSON ({err.msg}): {line[:80]!r}") from err
    return rows
