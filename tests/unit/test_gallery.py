"""studio.gallery: outputs on disk, running numbers, history index that survives restarts and damage."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from studio import gallery
from studio.gallery import INDEX_NAME, HistoryEntry, OutputStore
from studio.imagemeta import read_infotext
from studio.metadata import format_infotext, parse_infotext
from studio.types import GenerationRequest, GenerationResult

NAME = re.compile(r"^(\d{5})-(\d+)\.png$")


def _result(
    count: int = 2,
    seed: int = 100,
    size: tuple[int, int] = (24, 16),
    prompt: str = "a cat",
    backend: str = "local",
    inpaint: bool = False,
) -> GenerationResult:
    width, height = size
    extra = {}
    if inpaint:
        extra = {"image": Image.new("RGB", size), "mask": Image.new("L", size, 255)}
    request = GenerationRequest(prompt=prompt, seed=seed, width=width, height=height, count=count, **extra)
    seeds = request.seeds()
    colors = ["red", "green", "blue", "white", "black", "yellow"]
    return GenerationResult(
        images=[Image.new("RGB", size, colors[i % len(colors)]) for i in range(count)],
        seeds=seeds,
        infotexts=[format_infotext(request, s, model="tiny", backend=backend) for s in seeds],
        request=request,
        model="tiny",
        backend=backend,
    )


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch):
    """Make gallery's clock deterministic: 2024-05-17 23:00 local time, advancing one second per call."""
    state = {"now": time.mktime((2024, 5, 17, 23, 0, 0, 0, 0, -1))}

    def fake_time() -> float:
        state["now"] += 1.0
        return state["now"]

    monkeypatch.setattr(gallery, "_now", fake_time)
    return state


def _index_lines(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / INDEX_NAME).read_text(encoding="utf-8").splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------------ save


def test_save_writes_readable_pngs_into_local_day_folder(tmp_path: Path, fixed_clock):
    store = OutputStore(tmp_path / "outputs")
    result = _result(count=2, seed=100, size=(24, 16), prompt="猫, 🐱")

    paths = store.save(result)

    assert paths == result.paths
    assert len(paths) == 2
    day_dir = (tmp_path / "outputs" / "2024-05-17").resolve()
    assert [Path(p) for p in paths] == [day_dir / "00000-100.png", day_dir / "00001-101.png"]
    for path, seed, infotext in zip(paths, result.seeds, result.infotexts, strict=True):
        assert Path(path).is_absolute()
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size == (24, 16)
            assert read_infotext(image) == infotext
        assert parse_infotext(infotext)["seed"] == seed

    lines = _index_lines(tmp_path / "outputs")
    assert [line["path"] for line in lines] == ["2024-05-17/00000-100.png", "2024-05-17/00001-101.png"]
    assert [line["seed"] for line in lines] == [100, 101]
    assert {line["task"] for line in lines} == {"txt2img"}
    assert {line["model"] for line in lines} == {"tiny"}
    assert lines[0]["infotext"] == result.infotexts[0]
    assert not [p for p in day_dir.iterdir() if p.name.startswith(".")], "temp files left behind"


def test_save_uses_local_date_of_the_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    moment = time.mktime((2023, 12, 31, 23, 59, 59, 0, 0, -1))  # local time, whatever the test machine's zone
    monkeypatch.setattr(gallery, "_now", lambda: moment)
    (path,) = OutputStore(tmp_path).save(_result(count=1))
    assert Path(path).parent.name == "2023-12-31"


def test_running_numbers_continue_after_existing_files(tmp_path: Path, fixed_clock):
    store = OutputStore(tmp_path)
    first = store.save(_result(count=2, seed=5))
    day_dir = Path(first[0]).parent
    (day_dir / "00041-999.png").write_bytes(b"someone else's file")  # A1111 rule: max existing number + 1
    second = store.save(_result(count=2, seed=5))

    numbers = [int(NAME.match(Path(p).name).group(1)) for p in first + second]
    assert numbers == [0, 1, 42, 43]
    assert (day_dir / "00041-999.png").read_bytes() == b"someone else's file"


def test_save_never_overwrites_an_existing_file(tmp_path: Path, fixed_clock, monkeypatch: pytest.MonkeyPatch):
    store = OutputStore(tmp_path)
    (existing,) = store.save(_result(count=1, seed=7))
    before = Path(existing).read_bytes()
    # Simulate a racing writer: the numbering thinks the folder is empty, so the name collides.
    monkeypatch.setattr(OutputStore, "_next_number", staticmethod(lambda day_dir: 0))

    (new,) = store.save(_result(count=1, seed=7))

    assert Path(existing).name == "00000-7.png"
    assert Path(new).name == "00001-7.png"
    assert Path(existing).read_bytes() == before


def test_concurrent_saves_from_four_threads_give_unique_files(tmp_path: Path):
    store = OutputStore(tmp_path)
    barrier = threading.Barrier(4)
    results: list[GenerationResult] = [_result(count=3, seed=1) for _ in range(4)]  # same seeds: same names
    errors: list[BaseException] = []

    def work(result: GenerationResult) -> None:
        try:
            barrier.wait()
            # Another OutputStore on the same root in the same process must share the lock.
            (store if results.index(result) % 2 else OutputStore(tmp_path)).save(result)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(result,)) for result in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert not errors
    paths = [p for result in results for p in result.paths]
    assert len(paths) == 12
    assert len(set(paths)) == 12
    numbers = sorted(int(NAME.match(Path(p).name).group(1)) for p in paths)
    if len({Path(p).parent for p in paths}) == 1:  # all in one day folder unless the test ran across midnight
        assert numbers == list(range(12))
    for path in paths:
        with Image.open(path) as image:
            assert image.size == (24, 16)
            assert read_infotext(image)
    assert len(_index_lines(tmp_path)) == 12
    assert sorted(entry.path for entry in store.history()) == sorted(paths)


def test_save_without_infotexts_writes_one_from_the_request(tmp_path: Path):
    result = _result(count=1, seed=77)
    result.infotexts = []
    (path,) = OutputStore(tmp_path).save(result)
    with Image.open(path) as image:
        params = parse_infotext(read_infotext(image))
    assert params["seed"] == 77 and params["prompt"] == "a cat"


def test_save_of_empty_result_writes_nothing(tmp_path: Path):
    result = _result(count=1)
    result.images, result.seeds, result.infotexts = [], [], []
    assert OutputStore(tmp_path / "out").save(result) == []
    assert not (tmp_path / "out").exists()


def test_save_into_unwritable_root_raises(tmp_path: Path):
    root = tmp_path / "not-a-folder"
    root.write_text("a file where the outputs folder should be")
    with pytest.raises(OSError):
        OutputStore(root).save(_result())


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores directory permissions")
def test_save_into_read_only_root_raises(tmp_path: Path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(OSError):
            OutputStore(tmp_path / "outputs").save(_result())
    finally:
        tmp_path.chmod(0o700)


def test_index_write_failure_raises_and_leaves_no_unindexed_file(tmp_path: Path, fixed_clock):
    (tmp_path / INDEX_NAME).mkdir()  # the index cannot be opened for appending
    result = _result(count=2)
    with pytest.raises(OSError):
        OutputStore(tmp_path).save(result)
    assert result.paths == []
    assert list((tmp_path / "2024-05-17").iterdir()) == []


def test_png_write_failure_raises_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def broken_save_png(image, infotext, path, compress_level=1):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gallery, "save_png", broken_save_png)
    store = OutputStore(tmp_path)
    with pytest.raises(OSError, match="No space"):
        store.save(_result(count=2))
    assert [p for p in tmp_path.rglob("*.png")] == []
    assert store.history() == []


# --------------------------------------------------------------------------------------------- history


def test_history_is_newest_first_and_survives_restart(tmp_path: Path, fixed_clock):
    store = OutputStore(tmp_path)
    saved = [store.save(_result(count=1, seed=seed))[0] for seed in (1, 2, 3)]

    entries = store.history()
    assert [e.path for e in entries] == saved[::-1]
    assert [e.seed for e in entries] == [3, 2, 1]
    assert all(isinstance(e, HistoryEntry) for e in entries)
    assert entries[0].params["seed"] == 3 and entries[0].params["prompt"] == "a cat"
    assert entries[0].created > entries[1].created > entries[2].created
    assert entries[0].task == "txt2img" and entries[0].model == "tiny" and entries[0].backend == "local"

    reopened = OutputStore(tmp_path).history()
    assert [(e.path, e.created, e.infotext, e.seed) for e in reopened] == [
        (e.path, e.created, e.infotext, e.seed) for e in entries
    ]
    assert [e.path for e in OutputStore(tmp_path).history(limit=1, offset=1)] == [saved[1]]
    assert OutputStore(tmp_path).history(limit=0) == []
    with pytest.raises(ValueError):
        store.history(limit=-1)


def test_history_of_missing_root_is_empty_and_creates_nothing(tmp_path: Path):
    assert OutputStore(tmp_path / "never").history() == []
    assert not (tmp_path / "never").exists()


def test_history_keeps_task_and_backend(tmp_path: Path, fixed_clock):
    store = OutputStore(tmp_path)
    store.save(_result(count=1, inpaint=True, backend="sagemaker"))
    (entry,) = store.history()
    assert entry.task == "inpaint"
    assert entry.backend == "sagemaker"
    assert entry.params["backend"] == "sagemaker" and entry.params["mask_blur"] == 4


def test_history_skips_entries_whose_file_was_deleted(tmp_path: Path, fixed_clock):
    store = OutputStore(tmp_path)
    paths = store.save(_result(count=3))
    os.remove(paths[1])
    assert [e.path for e in OutputStore(tmp_path).history()] == [paths[2], paths[0]]


def test_history_rebuilds_from_pngs_when_index_is_deleted(tmp_path: Path, fixed_clock):
    store = OutputStore(tmp_path)
    result_a = _result(count=2, seed=10)
    result_b = _result(count=1, seed=20, inpaint=True, backend="sagemaker")
    store.save(result_a)
    store.save(result_b)
    # Give the files distinct, ordered mtimes: the rebuild can only order by file time.
    for i, path in enumerate(result_a.paths + result_b.paths):
        os.utime(path, (1_700_000_000 + i, 1_700_000_000 + i))
    (tmp_path / INDEX_NAME).unlink()

    entries = OutputStore(tmp_path).history()

    assert [e.path for e in entries] == (result_a.paths + result_b.paths)[::-1]
    assert [e.seed for e in entries] == [20, 11, 10]
    assert entries[0].infotext == result_b.infotexts[0]
    assert entries[0].task == "inpaint" and entries[0].backend == "sagemaker"
    assert entries[1].task == "txt2img" and entries[1].model == "tiny"
    assert entries[2].created == pytest.approx(1_700_000_000)
    # The rebuilt entries were written back, so the next start does not have to read the PNGs again.
    assert sorted(line["path"] for line in _index_lines(tmp_path)) == sorted(
        str(Path(p).relative_to(tmp_path.resolve()).as_posix()) for p in result_a.paths + result_b.paths
    )


def test_history_lists_pngs_missing_from_the_index(tmp_path: Path, fixed_clock):
    store = OutputStore(tmp_path)
    (indexed,) = store.save(_result(count=1, seed=1))
    day_dir = Path(indexed).parent
    foreign = day_dir / "00099-555.png"
    request = GenerationRequest(prompt="copied in", seed=555)
    Image.new("RGB", (8, 8)).save(foreign, pnginfo=_pnginfo(format_infotext(request, 555)))
    os.utime(foreign, (time.time() + 3600, time.time() + 3600))
    (day_dir / "00100-1.png").write_bytes(b"")  # a reserved, not yet written name: not listed
    (day_dir / "00101-1.png").write_bytes(b"not a png")  # unreadable: skipped

    entries = OutputStore(tmp_path).history()
    assert [e.path for e in entries] == [str(foreign), indexed]
    assert entries[0].seed == 555 and entries[0].params["prompt"] == "copied in"


def test_history_during_a_save_does_not_list_or_index_the_unfinished_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    store = OutputStore(tmp_path)
    seen_during_save: list[list[HistoryEntry]] = []
    real_save_png = gallery.save_png

    def save_png_then_look(image, infotext, path, compress_level=1):
        written = real_save_png(image, infotext, path, compress_level)
        seen_during_save.append(OutputStore(tmp_path).history())  # PNG complete, index line not yet written
        return written

    monkeypatch.setattr(gallery, "save_png", save_png_then_look)
    paths = store.save(_result(count=2))

    assert [len(seen) for seen in seen_during_save] == [0, 1]
    assert [line["path"] for line in _index_lines(tmp_path)] == [
        Path(p).relative_to(tmp_path.resolve()).as_posix() for p in paths
    ]


def _pnginfo(text: str):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", text)
    return info


def test_corrupt_index_lines_are_skipped_with_a_warning(tmp_path: Path, fixed_clock, caplog: pytest.LogCaptureFixture):
    store = OutputStore(tmp_path)
    first = store.save(_result(count=1, seed=1))
    with open(tmp_path / INDEX_NAME, "ab") as handle:
        handle.write(b"{not json\n")
        handle.write(b'["a list, not a record"]\n')
        handle.write(b'{"path": "../../etc/passwd", "created": 1}\n')
        handle.write(b"\xff\xfe binary junk\n")
    second = store.save(_result(count=1, seed=2))
    with open(tmp_path / INDEX_NAME, "ab") as handle:
        handle.write(b'{"path": "2024-05-17/00001-2.png", "crea')  # a crash mid-line, no newline
    third = store.save(_result(count=1, seed=3))  # must start on a fresh line
    last_line = (tmp_path / INDEX_NAME).read_text(encoding="utf-8", errors="replace").splitlines()[-1]
    assert json.loads(last_line)["seed"] == 3

    with caplog.at_level(logging.WARNING, logger="studio.gallery"):
        entries = OutputStore(tmp_path).history()

    assert [e.path for e in entries] == third + second + first
    assert [e.seed for e in entries] == [3, 2, 1]
    warnings = [r.getMessage() for r in caplog.records if "corrupt line" in r.getMessage()]
    assert len(warnings) == 5


# ---------------------------------------------------------------------------------------------- delete


def test_delete_removes_file_and_index_line(tmp_path: Path, fixed_clock):
    store = OutputStore(tmp_path)
    paths = store.save(_result(count=3))
    with open(tmp_path / INDEX_NAME, "ab") as handle:
        handle.write(b"corrupt but kept\n")

    store.delete(paths[1])

    assert not Path(paths[1]).exists()
    assert [e.path for e in OutputStore(tmp_path).history()] == [paths[2], paths[0]]
    raw = (tmp_path / INDEX_NAME).read_text(encoding="utf-8")
    assert Path(paths[1]).name not in raw
    assert "corrupt but kept" in raw  # deleting one image does not throw away other lines
    relative = Path(paths[0]).relative_to(tmp_path.resolve()).as_posix()
    store.delete(relative)  # relative to root works too
    assert [e.path for e in store.history()] == [paths[2]]


def test_delete_rewrites_the_index_atomically_keeping_its_mode(tmp_path: Path):
    """The rewrite goes through studio.fs.atomic_write: the index keeps its mode (a private mkstemp copy made it
    0600 before) and no temp file is left next to it."""
    store = OutputStore(tmp_path)
    paths = store.save(_result(count=2))
    (tmp_path / INDEX_NAME).chmod(0o644)
    store.delete(paths[0])
    assert os.stat(tmp_path / INDEX_NAME).st_mode & 0o777 == 0o644
    assert [line["path"] for line in _index_lines(tmp_path)] == [Path(paths[1]).relative_to(tmp_path).as_posix()]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_delete_of_already_missing_file_drops_it_from_index(tmp_path: Path):
    store = OutputStore(tmp_path)
    (path,) = store.save(_result(count=1))
    os.remove(path)
    store.delete(path)
    assert _index_lines(tmp_path) == []


@pytest.mark.parametrize("outside", ["../outside.png", "/etc/passwd", ".", INDEX_NAME])
def test_delete_rejects_paths_outside_root_or_not_images(tmp_path: Path, outside: str):
    root = tmp_path / "outputs"
    store = OutputStore(root)
    store.save(_result(count=1))
    (tmp_path / "outside.png").write_bytes(b"keep me")
    with pytest.raises(ValueError):
        store.delete(outside)
    assert (tmp_path / "outside.png").read_bytes() == b"keep me"
    assert (root / INDEX_NAME).exists()
    assert len(store.history()) == 1


def test_delete_rejects_symlink_escaping_root(tmp_path: Path):
    root = tmp_path / "outputs"
    store = OutputStore(root)
    (path,) = store.save(_result(count=1))
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    link = Path(path).parent / "00050-1.png"
    link.symlink_to(victim)
    with pytest.raises(ValueError):
        store.delete(str(link))
    assert victim.read_bytes() == b"precious"
