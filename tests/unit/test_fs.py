"""studio.fs: atomic single-file writes, atomic folders and the cross-process lock."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studio import fs
from studio.testing.servers import REPO


def _modes(umask: int) -> tuple[int, int]:
    """(folder mode, file mode) that a finished tree gets under `umask`."""
    return 0o777 & ~umask, 0o666 & ~umask


# --- atomic_write -------------------------------------------------------------------------------------------------


def test_atomic_write_writes_bytes_and_text_with_default_mode(tmp_path):
    assert fs.atomic_write(tmp_path / "a.bin", b"\x00\x01") == tmp_path / "a.bin"
    fs.atomic_write(tmp_path / "sub" / "b.txt", "grüße")  # parent folders are created
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "sub" / "b.txt").read_text(encoding="utf-8") == "grüße"
    assert os.stat(tmp_path / "a.bin").st_mode & 0o777 == fs.DEFAULT_FILE_MODE == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "sub"]


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces_unless_told(tmp_path):
    target = tmp_path / "reserved.png"
    target.write_bytes(b"")
    target.chmod(0o640)
    fs.atomic_write(target, b"new")
    assert (target.read_bytes(), os.stat(target).st_mode & 0o777) == (b"new", 0o640)
    fs.atomic_write(target, b"newer", mode=0o600)
    assert (target.read_bytes(), os.stat(target).st_mode & 0o777) == (b"newer", 0o600)


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_atomic_write_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch, failing):
    target = tmp_path / "index.json"
    target.write_text("old")

    def broken(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, broken)
    with pytest.raises(OSError, match="No space"):
        fs.atomic_write(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["index.json"]


def test_atomic_write_durable_fsyncs_the_file_and_its_folder(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    fs.atomic_write(tmp_path / "cache.json", "{}", durable=False)
    assert synced == []
    fs.atomic_write(tmp_path / "durable.json", "{}")
    assert len(synced) == 2  # the temp file before the rename, the folder after it


# --- staged_dir / publish_dir -------------------------------------------------------------------------------------


def test_staged_dir_publishes_by_rename_with_umask_modes(tmp_path):
    target = tmp_path / "model"
    with fs.staged_dir(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.tmp-")
        assert not target.exists()  # nothing visible while the folder is being written
        (tmp / "unet").mkdir()
        (tmp / "unet" / "weights").write_bytes(b"w")
    assert not tmp.exists()
    assert (target / "unet" / "weights").read_bytes() == b"w"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    folder_mode, file_mode = _modes(fs.current_umask())
    assert target.stat().st_mode & 0o777 == folder_mode  # mkdtemp alone would leave 0700
    assert (target / "unet").stat().st_mode & 0o777 == folder_mode
    assert (target / "unet" / "weights").stat().st_mode & 0o777 == file_mode


@pytest.mark.parametrize("existing", [False, True])
def test_staged_dir_removes_the_temp_folder_on_an_exception(tmp_path, existing):
    target = tmp_path / "model"
    if existing:
        target.mkdir()
        (target / "model_index.json").write_text("old")
    with pytest.raises(RuntimeError, match="half-way"):
        with fs.staged_dir(target, replace=lambda _: True) as tmp:
            (tmp / "model_index.json").write_text("new")
            raise RuntimeError("half-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == (["model"] if existing else [])
    if existing:
        assert (target / "model_index.json").read_text() == "old"


def test_staged_dir_refuses_to_replace_foreign_content(tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="precious"):
        with fs.staged_dir(target) as tmp:
            (tmp / "model_index.json").write_text("{}")
    assert (target / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]


def test_staged_dir_replaces_when_the_predicate_allows(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "model_index.json").write_text("old")
    (target / "stale.bin").write_bytes(b"x")
    asked: list[Path] = []

    def is_model_folder(path: Path) -> bool:
        asked.append(path)
        return (path / "model_index.json").is_file()

    with fs.staged_dir(target, replace=is_model_folder) as tmp:
        (tmp / "model_index.json").write_text("new")
    assert asked == [target]
    assert sorted(p.name for p in target.iterdir()) == ["model_index.json"]
    assert (target / "model_index.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the old copy is gone too


def test_staged_dir_always_replaces_an_empty_folder(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    with fs.staged_dir(target) as tmp:
        (tmp / "file").write_text("x")
    assert (target / "file").read_text() == "x"


# --- file_lock ----------------------------------------------------------------------------------------------------

_CHILD = """
import sys, time
from pathlib import Path
from studio import fs
lock, marker = Path(sys.argv[1]), Path(sys.argv[2])
print("waiting", flush=True)
with fs.file_lock(lock):
    marker.write_text(str(time.time()))
"""


def test_file_lock_excludes_a_second_process(tmp_path):
    lock = tmp_path / "locks" / "build.lock"  # the folder is created on demand
    marker = tmp_path / "child-got-the-lock"
    with fs.file_lock(lock):
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(lock), str(marker)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "waiting"
            time.sleep(1.0)  # ample time for the child to take the lock, if it could
            assert not marker.exists() and child.poll() is None
            released = time.time()
        except BaseException:
            child.kill()
            raise
    assert child.wait(timeout=30) == 0
    assert float(marker.read_text()) >= released


def test_current_umask_reads_the_process_umask():
    umask = os.umask(0o027)
    try:
        assert fs.current_umask() == 0o027
    finally:
        os.umask(umask)


def test_atomic_path_publishes_what_the_caller_wrote_and_nothing_on_failure(tmp_path):
    target = tmp_path / "big.bin"
    with fs.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"x" * 1000)
        assert not target.exists()  # nothing visible until the block succeeds
    assert target.read_bytes() == b"x" * 1000
    assert oct(target.stat().st_mode & 0o777) == oct(fs.DEFAULT_FILE_MODE)
    with pytest.raises(RuntimeError), fs.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"x" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]
