"""The one copy of the studio's file-safety helpers: cross-process locks, atomic file writes, atomic folders.

Readers (another process, a crash, the gallery scanning a folder) must never see half a file or half a model
folder. Everything the studio writes to a shared place goes through here:
- `file_lock(path)`: an exclusive fcntl lock, so parallel processes build a cache entry once;
- `atomic_write(path, data)`: a temp file in the same folder, fsync'd, then os.replace;
- `staged_dir(target)`: build a folder beside `target`, then rename it into place (or remove it on failure).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

DEFAULT_FILE_MODE = 0o644


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive fcntl lock on `path` (created if needed), held for the `with` block."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def current_umask() -> int:
    """The process umask, read without changing it where possible (os.umask changes it for all threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def apply_umask(tree: Path) -> None:
    """mkdtemp/mkstemp create private (0700/0600) entries; give a finished tree the usual umask-based modes, so a
    cache built as root in a container image stays readable by the serving user."""
    umask = current_umask()
    tree.chmod(0o777 & ~umask)
    for path in tree.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path, *, mode: int | None = None, durable: bool = True) -> Iterator[Path]:
    """Yield a temp path beside `path` for the caller to write (a big file, written by a library); when the block
    succeeds it is fsync'd (`durable`) and renamed to `path`, so a reader or a crash never sees half a file.

    `mode` defaults to the mode of the file being replaced (e.g. a name reserved with O_EXCL), else 0644. On an
    exception the temp file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode is None:
        try:
            mode = os.stat(path).st_mode & 0o777
        except OSError:
            mode = DEFAULT_FILE_MODE
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        if durable:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes | str, *, mode: int | None = None, durable: bool = True) -> Path:
    """Write `data` to `path` so that a reader or a crash never sees a half-written file (see atomic_path)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path, mode=mode, durable=durable) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


def _replace_never(_target: Path) -> bool:
    return False


@contextlib.contextmanager
def staged_dir(target: Path, *, replace: Callable[[Path], bool] = _replace_never) -> Iterator[Path]:
    """Yield an empty temp folder beside `target`; when the block succeeds, publish it at `target` with a rename.

    On an exception the temp folder is removed and `target` is untouched. An empty folder at `target` is always
    replaced; another existing `target` is replaced only when `replace(target)` says so (e.g. "it is an older copy
    of the same kind of folder"), otherwise FileExistsError: content the studio did not write is never deleted.
    The published tree gets umask-based modes (see apply_umask).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        apply_umask(tmp)
        publish_dir(tmp, target, replace=replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_dir(tmp: Path, target: Path, *, replace: Callable[[Path], bool] = _replace_never) -> None:
    """Move the finished folder `tmp` to `target` with renames, so readers never see a half-written folder."""
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if not target.exists():
        os.rename(tmp, target)
        return
    if not replace(target):
        raise FileExistsError(f"{target} exists and was not written by the studio; not replacing it")
    old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
    os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
