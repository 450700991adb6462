"""Append-only JSON-lines files that survive a killed writer.

Every record is one line, written and fsynced at once, so a run killed with SIGKILL
loses at most the line in flight; that torn line is skipped on read and terminated
before the next append, so the file never holds two records on one line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def read_jsonl(path: str | Path) -> list[dict]:
    """Every complete JSON object of the file (none if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn line from a killed run
        if isinstance(row, dict):
            rows.append(row)
    return rows


def append_jsonl(path: str | Path, row: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        if f.tell() > 0:
            with open(path, "rb") as tail:
                tail.seek(-1, os.SEEK_END)
                if tail.read(1) != b"\n":
                    f.write(b"\n")  # end the torn line a killed run left
        f.write((json.dumps(row, sort_keys=True) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())
