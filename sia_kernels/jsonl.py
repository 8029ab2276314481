"""JSON-lines files: one reader with line-numbered errors (``sia generate`` prompts, ``sia
train-value`` data) and one writer that never leaves a stray temporary file.

Errors name the file and the line: ``in.jsonl, line 3: invalid JSON (Expecting ',' delimiter,
column 17)``. Blank lines are skipped (line numbers still count them).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["iter_jsonl", "read_jsonl", "JsonlWriter"]


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of ``path``. A line that is not UTF-8,
    not valid JSON or not a JSON object raises ValueError naming the file and line; a missing
    file raises FileNotFoundError naming it."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}, line {lineno}: not UTF-8 (byte {e.start + 1})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}, line {lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_jsonl(path: str | os.PathLike, check: Callable[[dict, str], dict] | None = None) -> list[dict]:
    """All objects of ``path``; ``check(obj, where)`` (``where`` = "FILE, line N") may validate or
    convert each one and raise ValueError with ``where`` in its message. An empty file is a
    ValueError."""
    if check is not None and not callable(check):
        raise TypeError(f"check must be callable or None, got {type(check).__name__}")
    rows = [obj if check is None else check(obj, f"{path}, line {n}") for n, obj in iter_jsonl(path)]
    if not rows:
        raise ValueError(f"{path}: no rows (the file has no non-blank lines)")
    return rows


class JsonlWriter:
    """Append JSON rows to a hidden temporary file next to ``out``; ``commit()`` moves it onto
    ``out`` (atomically, with ``os.replace``), ``discard()`` deletes it. The file is created with
    mode 0o666 minus the umask, like any file the user writes.

    Used as a context manager, an exception leaves ``out`` untouched and deletes the temporary
    file unless ``commit`` was called."""

    def __init__(self, out: str | os.PathLike):
        if not isinstance(out, (str, os.PathLike)):
            raise TypeError(f"out must be a str or os.PathLike, got {type(out).__name__}")
        self.out = Path(out)
        self.rows = 0
        for n in range(1000):
            tmp = self.out.parent / f".{self.out.name}.{os.getpid()}.{n}.partial"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(f"could not create a temporary file next to {self.out}")
        self.tmp = tmp
        self._f = os.fdopen(fd, "w", encoding="utf-8")

    def write(self, row: dict) -> None:
        """Write one row and flush it (so a finished row survives a crash of this process)."""
        if not isinstance(row, dict):
            raise TypeError(f"row must be a dict, got {type(row).__name__}")
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()
        self.rows += 1

    def commit(self) -> None:
        """Make the rows written so far the content of ``out``."""
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.tmp, self.out)

    def discard(self) -> None:
        """Delete the temporary file; ``out`` is left as it was."""
        if not self._f.closed:
            self._f.close()
        if self.tmp.exists():
            self.tmp.unlink()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()  # after commit the temporary file no longer exists
