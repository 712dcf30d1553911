"""Mapped IR weights out of RSS (studio.engines.openvino_pages): while a network packs its weights, the read-only
memory maps of the IR files it was compiled from are dropped from the process's resident memory, and reading them
again gives the same bytes; writable maps and files nobody registered are never touched; and the OpenVINO engine
ends a generation holding none of its IR's mapped pages, with the same pixels as without dropping. The VAE also
gives back the UNet's intermediate buffers before decoding and its own after (same pixels on the next image)."""

from __future__ import annotations

import hashlib
import mmap
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from studio.engines.openvino_pages import MappedWeights

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc are Linux's")

SIZE = 16 * 2**20


def mapped_kb(path: Path) -> int:
    """This process's resident kB of every mapping of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:  # a mapping's header line
            inside = len(fields) == 6 and fields[5] == str(path)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


def weights_file(tmp_path: Path, name: str = "model.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).integers(0, 255, SIZE, dtype=np.uint8).tobytes())
    return path


def read_only_map(path: Path) -> tuple[mmap.mmap, str]:
    with open(path, "rb") as handle:
        view = mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ)  # shared and read-only, as OpenVINO maps an IR
    return view, hashlib.sha256(view).hexdigest()  # hashing reads (faults in) every page


def test_drop_releases_a_registered_read_only_map_and_reads_back_the_same_bytes(tmp_path):
    path = weights_file(tmp_path)
    view, digest = read_only_map(path)
    assert mapped_kb(path) >= SIZE // 1024 * 0.9
    weights = MappedWeights()
    weights.add(path)
    assert weights.drop() >= SIZE
    assert mapped_kb(path) < 512
    assert hashlib.sha256(view).hexdigest() == digest  # faulted back in from the file, same bytes
    view.close()


def test_writable_maps_and_unregistered_files_are_left_alone(tmp_path):
    registered = weights_file(tmp_path, "registered.bin")
    other = weights_file(tmp_path, "other.bin")
    with open(registered, "r+b") as handle:
        writable = mmap.mmap(handle.fileno(), 0)  # shared, read-write: dropping it is not ours to decide
    writable[:4] = b"edit"
    writable_digest = hashlib.sha256(writable).hexdigest()
    unregistered, _ = read_only_map(other)
    weights = MappedWeights()
    weights.add(registered)
    assert weights.drop() == 0
    assert mapped_kb(registered) >= SIZE // 1024 * 0.9 and mapped_kb(other) >= SIZE // 1024 * 0.9
    assert hashlib.sha256(writable).hexdigest() == writable_digest
    writable.close()
    unregistered.close()


def test_packing_runs_one_dropping_thread_across_nested_and_concurrent_bodies_and_drops_at_the_end(tmp_path):
    path = weights_file(tmp_path)
    view, _ = read_only_map(path)
    weights = MappedWeights(interval=0.01)
    weights.add(path)

    def droppers() -> int:
        return sum(t.name == "openvino-mapped-weights" and t.is_alive() for t in threading.enumerate())

    inside = threading.Event()
    release = threading.Event()

    def other_body() -> None:
        with weights.packing():
            inside.set()
            release.wait(10)

    with weights.packing():
        other = threading.Thread(target=other_body)
        other.start()
        assert inside.wait(10)
        with weights.packing():
            assert weights.active and droppers() == 1
        hashlib.sha256(view).hexdigest()  # pages read while packing ...
    assert weights.active and droppers() == 1, "the other body still packs"
    release.set()
    other.join(10)
    assert not weights.active and droppers() == 0
    assert mapped_kb(path) < 512  # ... are gone once packing ends
    view.close()


def test_a_disabled_instance_drops_nothing(tmp_path):
    path = weights_file(tmp_path)
    view, _ = read_only_map(path)
    weights = MappedWeights(enabled=False)
    weights.add(path)
    assert not weights.enabled and weights.drop() == 0 and mapped_kb(path) >= SIZE // 1024 * 0.9
    view.close()


def test_the_openvino_engine_ends_a_generation_without_its_ir_pages_and_with_the_same_pixels(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    from studio import engines
    from studio.config import EngineSettings
    from studio.engines import openvino_pages
    from studio.types import GenerationRequest

    request = GenerationRequest(prompt="a red cube", width=64, height=64, steps=3, seed=7)

    def run(enabled: bool, cache: Path) -> tuple[np.ndarray, list[Path], object]:
        monkeypatch.setattr(openvino_pages.MAPPED_WEIGHTS, "enabled", enabled)
        engine = engines.build(EngineSettings(model="demo", kind="openvino", precision="f32", openvino_cache=cache))
        engine.load()
        image = np.asarray(engine.generate(request).images[0])
        ir = [Path(c.ir_dir) / "model.bin" for c in engine.accelerator.report.components]
        return image, ir, engine  # the engine keeps its IR mapped

    kept, ir_kept, _engine = run(False, tmp_path / "keep")
    assert sum(mapped_kb(p) for p in ir_kept) > 1024  # the demo's IR weights, read by the plugin
    dropped, ir, _other = run(True, tmp_path / "drop")
    assert {p.name for p in ir} == {"model.bin"} and all(p.is_file() for p in ir)
    assert sum(mapped_kb(p) for p in ir) < 256
    np.testing.assert_array_equal(dropped, kept)


def test_the_vae_releases_the_unets_buffers_before_decoding_and_its_own_after_with_the_same_pixels(
    tmp_path, monkeypatch
):
    pytest.importorskip("openvino")
    from PIL import Image

    from studio import engines
    from studio.config import EngineSettings
    from studio.engines.openvino_modules import CompiledNetwork
    from studio.types import GenerationRequest

    engine = engines.build(EngineSettings(model="demo", kind="openvino", precision="f32", openvino_cache=tmp_path))
    engine.load()
    request = GenerationRequest(prompt="a red cube", width=64, height=64, steps=3, seed=7)
    first = np.asarray(engine.generate(request).images[0])

    events: list[tuple[str, str]] = []
    call, release = CompiledNetwork.__call__, CompiledNetwork.release_memory

    def recording_call(self, *arrays):
        events.append(("run", self.name))
        return call(self, *arrays)

    def recording_release(self):
        events.append(("release", self.name))
        return release(self)

    monkeypatch.setattr(CompiledNetwork, "__call__", recording_call)
    monkeypatch.setattr(CompiledNetwork, "release_memory", recording_release)
    again = np.asarray(engine.generate(request).images[0])
    np.testing.assert_array_equal(again, first)  # buffers allocated again give the same pixels
    assert events[-3:] == [("release", "unet"), ("run", "vae_decoder"), ("release", "vae_decoder")]
    assert events.count(("run", "unet")) == 3 and events.count(("release", "unet")) == 1

    events.clear()
    init = Image.fromarray(first)
    engine.generate(request.replace(image=init, strength=0.5))
    assert events[events.index(("run", "vae_encoder")) + 1] == ("release", "vae_encoder")
    assert events[-1] == ("release", "vae_decoder")
