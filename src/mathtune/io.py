"""Files of the run directory: atomic writes, JSONL read/append with line-numbered errors."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

from mathtune.errors import MathtuneError


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def make_parent(path: Path) -> None:
    """Create the folder `path` goes in; a file standing where a folder must be is a one-line error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in [path.parent, *path.parent.parents] if p.exists() and not p.is_dir()), path.parent)
        raise MathtuneError(f"{path}: cannot be written: {blocker} is a file, not a folder") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a reader never sees half a file."""
    path = Path(path)
    make_parent(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; run files are meant to be shared and read
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def atomic_replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written folder into place, replacing any older one."""
    if final_dir.exists():
        old = final_dir.with_name(final_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)


def read_json(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise MathtuneError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MathtuneError(f"{path}: not valid JSON ({e})") from None


def read_jsonl(path: Path, drop_torn_tail: bool = False) -> list[dict]:
    """Read a JSONL file; a bad line is an error naming the file and line.

    drop_torn_tail: a file we append to may end in half a line after a crash; drop it instead of failing.
    """
    path = Path(path)
    if not path.is_file():
        raise MathtuneError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise MathtuneError(f"{path}: not UTF-8 text (byte {e.start})") from None
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            is_tail = i == len(lines) and not text.endswith("\n")
            if drop_torn_tail and is_tail:
                break
            raise MathtuneError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise MathtuneError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def append_jsonl(path: Path, row: dict) -> None:
    """Append one row and flush it to disk, so a crash loses at most the line being written."""
    path = Path(path)
    make_parent(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def repair_jsonl(path: Path) -> list[dict]:
    """Rewrite an appended JSONL file without its torn last line (after a crash); return its rows."""
    path = Path(path)
    if not path.exists():
        return []
    rows = read_jsonl(path, drop_torn_tail=True)
    if not path.read_text(encoding="utf-8").endswith("\n") and path.stat().st_size:
        atomic_write_jsonl(path, rows)
    return rows
