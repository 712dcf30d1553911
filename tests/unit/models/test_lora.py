"""studio.models.lora: LoRA discovery and names as A1111 has them, A1111's LoRA hash, safe reading; the demo LoRA."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from studio.engine import ModelLoadError
from studio.models import lora
from studio.models.__main__ import main
from studio.models.demo_extras import DEMO_LORA_ALPHA, DEMO_LORA_RANK, build_demo_lora


def _tiny(path: Path, metadata: dict[str, str] | None = None, value: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_x.lora_down.weight": torch.full((2, 2), value)}, str(path), metadata=metadata)
    return path


@pytest.fixture
def lora_folder(tmp_path: Path) -> Path:
    """tmp_path/models with Lora/: top-level files, a subfolder, a duplicate stem, and things that are not LoRAs."""
    root = tmp_path / "models"
    _tiny(root / "Lora" / "alpha.safetensors")
    _tiny(root / "Lora" / "Beta.safetensors", metadata={"ss_output_name": "beta_alias"})
    _tiny(root / "Lora" / "style" / "gamma.safetensors")
    _tiny(root / "Lora" / "style" / "alpha.safetensors", value=2.0)  # same stem as the top-level one
    torch.save({"lora_unet_x.lora_down.weight": torch.ones(2, 2)}, root / "Lora" / "old.pt")
    (root / "Lora" / "notes.txt").write_text("not a LoRA")
    _tiny(root / "Lora" / ".hidden.safetensors")
    _tiny(root / "Lora" / ".cache" / "inside-hidden.safetensors")
    return root


def test_discover_finds_lora_files_at_any_depth_sorted_and_skips_the_rest(lora_folder: Path) -> None:
    found = lora.discover_loras(lora_folder)
    assert [(f.name, f.relative) for f in found] == [
        ("alpha", "alpha"),
        ("Beta", "Beta"),
        ("old", "old"),
        ("alpha", "style/alpha"),
        ("gamma", "style/gamma"),
    ]
    assert all(f.path.is_file() and f.path.is_relative_to(lora_folder / "Lora") for f in found)


def test_discover_without_a_lora_folder_is_empty(tmp_path: Path) -> None:
    assert lora.discover_loras(tmp_path) == []


def test_find_by_stem_path_alias_and_case(lora_folder: Path) -> None:
    found = lora.discover_loras(lora_folder)
    assert lora.find_lora("alpha", found).relative == "alpha"  # the duplicate stem means the first in order
    assert lora.find_lora("style/alpha", found).relative == "style/alpha"  # the path tells them apart
    assert lora.find_lora("gamma", found).relative == "style/gamma"
    assert lora.find_lora("beta_alias", found).name == "Beta"  # kohya's ss_output_name (A1111's alias)
    assert lora.find_lora("beta", found).name == "Beta"  # only one stem differs by case
    assert lora.find_lora("old", found).path.suffix == ".pt"
    assert lora.find_lora("missing", found) is None
    assert lora.find_lora("ALPHA", found) is None  # two stems fold to "alpha": ambiguous, so no guess


def test_hash_is_a1111s_sha256_of_the_tensor_data_after_the_header(tmp_path: Path) -> None:
    path = _tiny(tmp_path / "a.safetensors", metadata={"ss_output_name": "a"})
    data = path.read_bytes()
    (header_length,) = struct.unpack("<Q", data[:8])
    expected = hashlib.sha256(data[8 + header_length :]).hexdigest()[:12]
    assert lora.lora_hash(path) == expected
    assert expected != hashlib.sha256(data).hexdigest()[:12]
    # Editing the metadata changes the file but not the hash (why A1111 hashes only the tensors).
    renamed = _tiny(tmp_path / "b.safetensors", metadata={"ss_output_name": "something much longer", "x": "y"})
    assert renamed.read_bytes() != data
    assert lora.lora_hash(renamed) == expected
    # Other tensors -> another hash.
    assert lora.lora_hash(_tiny(tmp_path / "c.safetensors", value=3.0)) != expected


def test_hash_prefers_the_sshs_model_hash_a_trainer_stored(tmp_path: Path) -> None:
    stored = "DA259DF60E3612CDA6E7736D9E733018D585DF5C6F8821273AAB137160A5510E"
    path = _tiny(tmp_path / "k.safetensors", metadata={"sshs_model_hash": stored})
    assert lora.lora_hash(path) == "da259df60e36"


def test_hash_of_a_pickled_lora_is_the_whole_file(lora_folder: Path) -> None:
    path = lora_folder / "Lora" / "old.pt"
    assert lora.lora_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_hash_follows_a_changed_file(tmp_path: Path) -> None:
    path = _tiny(tmp_path / "a.safetensors")
    before = lora.lora_hash(path)
    _tiny(path, value=5.0)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert lora.lora_hash(path) != before


def test_a_broken_safetensors_header_is_a_named_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(ModelLoadError, match="bad.safetensors: not a valid .safetensors"):
        lora.safetensors_metadata(bad)
    (tmp_path / "short.safetensors").write_bytes(b"abc")
    with pytest.raises(ModelLoadError, match="short.safetensors"):
        lora.lora_hash(tmp_path / "short.safetensors")


class _Payload:
    """Pickles to a call of os.system: what a malicious .pt would carry."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/studio-lora-pwned",))


def test_a_pickled_lora_is_read_weights_only_and_code_is_refused(lora_folder: Path, tmp_path: Path) -> None:
    tensors = lora.read_pickled_lora(lora_folder / "Lora" / "old.pt")
    assert list(tensors) == ["lora_unet_x.lora_down.weight"]
    evil = tmp_path / "evil.pt"
    torch.save({"lora_unet_x.lora_down.weight": torch.ones(1), "extra": _Payload()}, evil)
    marker = Path("/tmp/studio-lora-pwned")
    marker.unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match="evil.pt: refused to load: .*pickled code"):
        lora.read_pickled_lora(evil)
    assert not marker.exists()


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in sorted(handle.keys())}


def test_demo_lora_is_kohya_format_and_deterministic(tmp_path: Path) -> None:
    first = build_demo_lora(tmp_path / "a.safetensors")
    again = build_demo_lora(tmp_path / "b.safetensors")
    other = build_demo_lora(tmp_path / "c.safetensors", seed=1)
    # safetensors writes the metadata in no fixed order, so compare the tensors and A1111's hash (which skips it).
    assert _tensors(first).keys() == _tensors(other).keys()
    assert all(torch.equal(a, b) for a, b in zip(_tensors(first).values(), _tensors(again).values(), strict=True))
    assert lora.lora_hash(first) == lora.lora_hash(again) != lora.lora_hash(other)
    with safe_open(str(first), framework="pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata()
        alpha = handle.get_tensor(next(k for k in keys if k.endswith(".alpha")))
        down = handle.get_tensor(next(k for k in keys if k.endswith(".lora_down.weight")))
    assert {k.split(".", 1)[1] for k in keys} == {"lora_down.weight", "lora_up.weight", "alpha"}
    modules = {k.split(".", 1)[0] for k in keys}
    assert any(m.startswith("lora_unet_") and m.endswith("_attn2_to_k") for m in modules)
    assert any(m.startswith("lora_te_text_model_encoder_layers_") and m.endswith("_mlp_fc1") for m in modules)
    assert all(m.startswith(("lora_unet_", "lora_te_")) for m in modules)
    assert float(alpha) == DEMO_LORA_ALPHA and down.shape[0] == DEMO_LORA_RANK
    assert json.loads(json.dumps(metadata))["ss_network_module"] == "networks.lora"


def test_cli_builds_the_demo_lora(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "models" / "Lora" / "demo.safetensors"
    assert main(["build-demo-lora", str(target), "--seed", "3"]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    assert [f.name for f in lora.discover_loras(tmp_path / "models")] == ["demo"]
    assert main(["build-demo-lora", str(tmp_path / "demo.pt")]) == 1
    assert "demo.pt: the demo LoRA is a .safetensors file" in capsys.readouterr().err
