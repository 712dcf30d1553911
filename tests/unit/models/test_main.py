"""python -m studio.models: the command line."""

from __future__ import annotations

from studio.models.__main__ import main


def test_cli_list(models_folder, capsys):
    root = models_folder
    assert main(["list", str(root)]) == 0
    names = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["alpha", "Beta", "my-diffusers", "sdxl/gamma"]
