"""Verdicts of paid or slow judges, kept on disk so judging the same answer again costs nothing.

One sqlite file (key -> yes/no): several processes may share it (sqlite locks the file), and a crash mid-run loses
nothing already written. Only real decisions are stored; a failed judgement is asked again next time.
"""
from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Iterable

_CHUNK = 500  # keys per query, below sqlite's bound-variable limit


class VerdictCache:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, correct INTEGER NOT NULL)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60)

    def get(self, keys: Iterable[str]) -> dict[str, bool]:
        keys = list(keys)
        found: dict[str, bool] = {}
        with closing(self._connect()) as db:
            for start in range(0, len(keys), _CHUNK):
                chunk = keys[start:start + _CHUNK]
                rows = db.execute(f"SELECT key, correct FROM verdicts WHERE key IN ({','.join('?' * len(chunk))})",
                                  chunk)
                found.update((k, bool(c)) for k, c in rows)
        return found

    def put(self, verdicts: dict[str, bool]) -> None:
        if verdicts:
            with closing(self._connect()) as db, db:
                db.executemany("INSERT OR REPLACE INTO verdicts VALUES (?, ?)",
                               [(k, int(v)) for k, v in verdicts.items()])
