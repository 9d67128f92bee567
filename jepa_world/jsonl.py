"""JSON Lines reading with errors that point at the bad line."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def read_jsonl(path: Path, error: type[Exception] = ValueError, torn_tail_ok: bool = False) -> list[tuple[int, Any]]:
    """``(line number, value)`` for each non-blank line; a malformed line raises ``error`` naming file:line.

    ``torn_tail_ok``: a last line with no newline that does not parse is what a writer killed
    mid-line leaves (append-only logs such as metrics.jsonl); it is dropped with a warning.
    """
    text = path.read_text()
    lines = text.splitlines()
    rows = []
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append((line_no, json.loads(line)))
        except json.JSONDecodeError as err:
            if torn_tail_ok and line_no == len(lines) and not text.endswith("\n"):
                log.warning("%s:%d: dropping a line cut short by an interrupted write: %r", path, line_no, line[:80])
                continue
            raise error(f"{path}:{line_no}: not valid JSON ({err.msg}): {line[:80]!r}") from err
    return rows
