"""Outputs on disk and the history index: every image is saved (with its infotext) before it is shown.

Layout, A1111-like so existing tools understand it:

    <root>/YYYY-MM-DD/00000-1234.png     running number per day folder (local date), then the seed
    <root>/history.jsonl                 one JSON line per saved image, appended after its PNG is complete

The PNG files are the source of truth; the index is a fast path. `history()` skips index lines whose file was
deleted, skips corrupt lines (with a warning), and finds PNGs the index does not know (index deleted, crash
between the two writes, images copied in) by reading their embedded infotext; found entries are appended to the
index so the work is done once. Nothing here swallows a failed write: `save()` raises OSError.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio import fs
from studio.imagemeta import read_infotext, save_png
from studio.metadata import format_infotext, parse_infotext
from studio.types import GenerationResult, Task

logger = logging.getLogger(__name__)

INDEX_NAME = "history.jsonl"
_LEADING_NUMBER = re.compile(r"^(\d+)")


@dataclass
class HistoryEntry:
    """One saved image as the gallery lists it. `path` is absolute; `params` is the parsed infotext."""

    path: str
    created: float
    infotext: str
    params: dict[str, Any] = field(default_factory=dict)
    task: str = Task.TXT2IMG.value
    seed: int | None = None
    model: str = ""
    backend: str = "local"


@dataclass
class _RootState:
    """Per-root state shared by every OutputStore on the same folder in this process."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    pending: set[str] = field(default_factory=set)  # relative paths reserved by a save still in progress


_STATES: dict[Path, _RootState] = {}
_STATES_GUARD = threading.Lock()


def _state_for(root: Path) -> _RootState:
    with _STATES_GUARD:
        return _STATES.setdefault(root, _RootState())


@dataclass
class _Candidate:
    """An image known from the index or from the folder scan, before its entry is built."""

    rel: str
    created: float
    record: dict[str, Any] | None  # index record, None when only found on disk


def _now() -> float:
    """Seconds since the epoch (one place, so tests can pin the clock without patching the time module)."""
    return time.time()


def _infer_task(params: dict[str, Any]) -> str:
    """Task of an image known only by its infotext (A1111 writes Mask blur for inpaint only)."""
    if "mask_blur" in params:
        return Task.INPAINT.value
    if "denoising_strength" in params and "Hires upscale" not in params:  # hires fix also writes a strength
        return Task.IMG2IMG.value
    return Task.TXT2IMG.value


class OutputStore:
    """Saves generation results under `root` and lists them back, newest first, across restarts."""

    def __init__(self, root: Path):
        self.root = Path(root).expanduser().resolve()
        self.index_path = self.root / INDEX_NAME
        self._state = _state_for(self.root)
        self._warned_lines: set[tuple[int, str]] = set()
        self._unindexed_cache: dict[tuple[str, float, int], HistoryEntry | None] = {}

    # -- saving ----------------------------------------------------------------------------------------------

    def save(self, result: GenerationResult) -> list[str]:
        """Write each image to root/YYYY-MM-DD/NNNNN-SEED.png with its infotext, then index it.

        Names are reserved under a lock with O_EXCL, so concurrent saves never collide or overwrite. Each PNG
        is complete (atomic write) before its index line is appended. Sets `result.paths` (absolute) and
        returns them. Raises OSError if anything cannot be written; images already indexed stay saved.
        """
        if not result.images:
            result.paths = []
            return []
        created = _now()
        day_dir = self.root / time.strftime("%Y-%m-%d", time.localtime(created))
        seeds = [result.seeds[i] if i < len(result.seeds) else None for i in range(len(result.images))]
        reserved = self._reserve(day_dir, seeds)

        done: list[str] = []
        try:
            for i, (image, path, seed) in enumerate(zip(result.images, reserved, seeds, strict=True)):
                infotext = result.infotexts[i] if i < len(result.infotexts) else ""
                if not infotext:
                    logger.warning("result image %d has no infotext; writing one from its request", i)
                    infotext = format_infotext(
                        result.request,
                        seed if seed is not None else result.request.seed,
                        model=result.model,
                        backend=result.backend,
                    )
                save_png(image, infotext, path)
                rel = path.relative_to(self.root).as_posix()
                record = {
                    "path": rel,
                    "created": created,
                    "infotext": infotext,
                    "task": result.request.task.value,
                    "seed": seed,
                    "model": result.model,
                    "backend": result.backend,
                }
                self._append_index([record])
                done.append(str(path))
                with self._state.lock:
                    self._state.pending.discard(rel)  # complete and indexed: history may list it now
        finally:
            with self._state.lock:
                for path in reserved[len(done) :]:  # placeholders (or an unindexed PNG) of a failed save
                    try:
                        path.unlink()
                    except FileNotFoundError:
                        pass
                    except OSError:
                        logger.warning("could not remove unfinished output %s", path, exc_info=True)
                for path in reserved:
                    self._state.pending.discard(path.relative_to(self.root).as_posix())
        logger.info("saved %d image(s) to %s", len(done), day_dir)
        result.paths = done
        return done

    def _reserve(self, day_dir: Path, seeds: list[int | None]) -> list[Path]:
        """Claim one file name per image: next running number in the day folder, created with O_EXCL."""
        paths: list[Path] = []
        with self._state.lock:
            day_dir.mkdir(parents=True, exist_ok=True)
            number = self._next_number(day_dir)
            try:
                for seed in seeds:
                    while True:
                        name = f"{number:05}-{seed}.png" if seed is not None else f"{number:05}.png"
                        path = day_dir / name
                        number += 1
                        try:
                            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, fs.DEFAULT_FILE_MODE)
                        except FileExistsError:
                            continue  # another process took it; never overwrite
                        os.close(fd)
                        paths.append(path)
                        self._state.pending.add(path.relative_to(self.root).as_posix())
                        break
            except BaseException:
                for path in paths:
                    self._state.pending.discard(path.relative_to(self.root).as_posix())
                    path.unlink(missing_ok=True)
                raise
        return paths

    @staticmethod
    def _next_number(day_dir: Path) -> int:
        """A1111's rule: one more than the largest leading number of any file in the folder (0 when empty)."""
        largest = -1
        with os.scandir(day_dir) as entries:
            for entry in entries:
                match = _LEADING_NUMBER.match(entry.name)
                if match:
                    largest = max(largest, int(match.group(1)))
        return largest + 1

    def _append_index(self, records: list[dict[str, Any]]) -> None:
        """Append JSON lines durably; start on a new line if a previous writer crashed mid-line."""
        data = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8")
        with self._state.lock:
            with open(self.index_path, "a+b") as handle:
                handle.seek(0, os.SEEK_END)
                if handle.tell() > 0:
                    handle.seek(-1, os.SEEK_END)
                    if handle.read(1) != b"\n":
                        data = b"\n" + data
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())

    # -- listing ---------------------------------------------------------------------------------------------

    def history(self, limit: int = 200, offset: int = 0) -> list[HistoryEntry]:
        """Saved images, newest first (`offset`/`limit` page through them).

        Index lines whose file is gone are skipped; corrupt lines are skipped with a warning; PNGs missing from
        the index are read from disk (their infotext, file time as `created`) and added to the index.
        """
        if limit < 0 or offset < 0:
            raise ValueError(f"limit and offset must be >= 0, got limit={limit}, offset={offset}")
        if not self.root.is_dir():
            return []
        with self._state.lock:
            records = self._read_index()
            on_disk = self._scan()
            pending = set(self._state.pending)

        candidates: list[_Candidate] = []
        for rel, (mtime, _size) in on_disk.items():
            record = records.get(rel)
            if record is None and rel in pending:
                continue  # being saved right now: the PNG may be complete but is not indexed yet
            created = record.get("created") if record else None
            if not isinstance(created, (int, float)) or isinstance(created, bool):
                created = mtime
            candidates.append(_Candidate(rel, float(created), record))
        candidates.sort(key=lambda c: (c.created, c.rel), reverse=True)

        entries: list[HistoryEntry] = []
        recovered: list[dict[str, Any]] = []
        for candidate in candidates[offset : offset + limit]:
            if candidate.record is not None:
                entries.append(self._entry_from_record(candidate.rel, candidate.created, candidate.record))
                continue
            mtime, size = on_disk[candidate.rel]
            entry = self._entry_from_file(candidate.rel, mtime, size)
            if entry is None:
                continue
            entries.append(entry)
            recovered.append(
                {
                    "path": candidate.rel,
                    "created": entry.created,
                    "infotext": entry.infotext,
                    "task": entry.task,
                    "seed": entry.seed,
                    "model": entry.model,
                    "backend": entry.backend,
                }
            )
        if recovered:
            try:
                self._append_index(recovered)
                logger.info("added %d image(s) found on disk to %s", len(recovered), self.index_path)
            except OSError:
                logger.warning("could not add recovered entries to %s", self.index_path, exc_info=True)
        return entries

    def _read_index(self) -> dict[str, dict[str, Any]]:
        """Index records by relative path (the last line for a path wins); corrupt lines are skipped."""
        records: dict[str, dict[str, Any]] = {}
        try:
            with open(self.index_path, "rb") as handle:
                lines = handle.read().split(b"\n")
        except FileNotFoundError:
            return records
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            record = self._decode_record(raw)
            if record is None:
                key = (number, raw[:200].decode("utf-8", errors="replace"))
                if key not in self._warned_lines:
                    self._warned_lines.add(key)
                    logger.warning("skipping corrupt line %d in %s: %.80r", number, self.index_path, raw)
                continue
            records[record["path"]] = record
        return records

    def _decode_record(self, raw: bytes) -> dict[str, Any] | None:
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        if not isinstance(record, dict) or not isinstance(record.get("path"), str) or not record["path"]:
            return None
        rel = Path(record["path"])
        if rel.is_absolute() or ".." in rel.parts:
            return None  # an index line must not point outside root
        record["path"] = rel.as_posix()
        return record

    def _scan(self) -> dict[str, tuple[float, int]]:
        """PNG files in root's sub-folders: relative path -> (mtime, size). Empty and hidden files are skipped."""
        found: dict[str, tuple[float, int]] = {}
        try:
            folders = [entry for entry in os.scandir(self.root) if entry.is_dir() and not entry.name.startswith(".")]
        except FileNotFoundError:
            return found
        for folder in folders:
            try:
                with os.scandir(folder.path) as files:
                    for entry in files:
                        if entry.name.startswith(".") or not entry.name.lower().endswith(".png"):
                            continue
                        try:
                            stat = entry.stat()
                        except FileNotFoundError:
                            continue
                        if entry.is_file() and stat.st_size > 0:
                            found[f"{folder.name}/{entry.name}"] = (stat.st_mtime, stat.st_size)
            except OSError:
                logger.warning("could not list %s", folder.path, exc_info=True)
        return found

    def _entry_from_record(self, rel: str, created: float, record: dict[str, Any]) -> HistoryEntry:
        infotext = record.get("infotext") if isinstance(record.get("infotext"), str) else ""
        params = parse_infotext(infotext)
        seed = record.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool):
            seed = params.get("seed") if isinstance(params.get("seed"), int) else None
        return HistoryEntry(
            path=str(self.root / rel),
            created=created,
            infotext=infotext,
            params=params,
            task=record.get("task") if isinstance(record.get("task"), str) else _infer_task(params),
            seed=seed,
            model=record.get("model") if isinstance(record.get("model"), str) else str(params.get("model", "")),
            backend=record.get("backend") if isinstance(record.get("backend"), str) else "local",
        )

    def _entry_from_file(self, rel: str, mtime: float, size: int) -> HistoryEntry | None:
        """Build an entry from a PNG's own infotext (None if the file cannot be read as an image)."""
        key = (rel, mtime, size)
        if key in self._unindexed_cache:
            return self._unindexed_cache[key]
        from PIL import Image

        path = self.root / rel
        try:
            with Image.open(path) as image:
                infotext = read_infotext(image) or ""
        except (OSError, ValueError, Image.DecompressionBombError):
            logger.warning("skipping unreadable image %s", path, exc_info=True)
            entry = None
        else:
            params = parse_infotext(infotext)
            seed = params.get("seed")
            entry = HistoryEntry(
                path=str(path),
                created=mtime,
                infotext=infotext,
                params=params,
                task=_infer_task(params),
                seed=seed if isinstance(seed, int) else None,
                model=str(params.get("model", "")),
                backend=str(params.get("backend", "local")),
            )
        self._unindexed_cache[key] = entry
        return entry

    # -- deleting --------------------------------------------------------------------------------------------

    def delete(self, path: str) -> None:
        """Remove a saved image and its index lines. Paths outside root (or the index itself) are a ValueError.

        A relative path is taken relative to root. Symlinks are resolved first, so a link cannot be used to
        delete something elsewhere. A file that is already gone is only dropped from the index.
        """
        target = Path(path).expanduser()
        if not target.is_absolute():
            target = self.root / target
        resolved = target.resolve()
        if resolved == self.root or not resolved.is_relative_to(self.root):
            raise ValueError(f"path: {path!r} is not inside the outputs folder {str(self.root)!r}")
        if resolved == self.index_path or resolved.is_dir():
            raise ValueError(f"path: {path!r} is not a saved image")
        rel = resolved.relative_to(self.root).as_posix()
        with self._state.lock:
            try:
                resolved.unlink()
            except FileNotFoundError:
                logger.info("%s was already deleted; dropping it from the index", resolved)
            self._drop_from_index(rel)
        logger.info("deleted %s", resolved)

    def _drop_from_index(self, rel: str) -> None:
        """Rewrite the index without `rel` (atomically); corrupt lines are kept as they are."""
        try:
            with open(self.index_path, "rb") as handle:
                lines = handle.read().split(b"\n")
        except FileNotFoundError:
            return
        kept = []
        for raw in lines:
            if not raw.strip():
                continue
            record = self._decode_record(raw)
            if record is not None and record["path"] == rel:
                continue
            kept.append(raw + b"\n")
        if len(kept) == sum(1 for raw in lines if raw.strip()):
            return
        fs.atomic_write(self.index_path, b"".join(kept))
