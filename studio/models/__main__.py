"""Command line for the model tools: build the demo model and its demo LoRA and VAE, list the models in a folder,
prepare a model with its OpenVINO IR (for images whose cold start must never convert, e.g. AWS Lambda).

python -m studio.models build-demo DIR [--inpaint]
python -m studio.models build-demo-lora PATH.safetensors [--seed N]
python -m studio.models build-demo-vae PATH.safetensors
python -m studio.models build-demo-taesd [MODELS_DIR] [--a1111] [--decoder-only]
python -m studio.models list [MODELS_DIR]
python -m studio.models export-openvino MODEL DIR [--precision bf16|f32]
                                          [--weights auto|int8|int8-hybrid|int8-full|fp16|fp32] [--models-dir DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from studio.config import OpenVINOWeights, Precision
from studio.engine import ModelLoadError
from studio.models.demo import build_demo
from studio.models.demo_extras import build_demo_lora, build_demo_taesd, build_demo_vae
from studio.models.sources import discover_models


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio.models", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build-demo", help="write the tiny demo model as a diffusers folder")
    build.add_argument("dir", type=Path)
    build.add_argument("--inpaint", action="store_true", help="the 9-channel inpainting variant")
    lora = commands.add_parser("build-demo-lora", help="write a small kohya-format LoRA for the demo model")
    lora.add_argument("path", type=Path, help="the .safetensors file to write (e.g. models/Lora/demo.safetensors)")
    lora.add_argument("--seed", type=int, default=0, help="another seed gives another LoRA (default 0)")
    vae = commands.add_parser("build-demo-vae", help="write a VAE file (original layout) for the demo model")
    vae.add_argument("path", type=Path, help="the .safetensors (or .pt) file (e.g. models/VAE/demo.safetensors)")
    taesd = commands.add_parser(
        "build-demo-taesd", help="write a TAESD with random weights to MODELS_DIR/VAE-approx (real speed, noise)"
    )
    taesd.add_argument("models_dir", type=Path, nargs="?", default=Path("models"))
    taesd.add_argument("--a1111", action="store_true", help="A1111's taesd_decoder/_encoder files, not a folder")
    taesd.add_argument("--decoder-only", action="store_true", help="with --a1111: only taesd_decoder (as A1111)")
    listing = commands.add_parser("list", help="list the models found in a models folder")
    listing.add_argument("models_dir", type=Path, nargs="?", default=Path("models"))
    export = commands.add_parser(
        "export-openvino", help="write MODEL as a diffusers folder with its converted OpenVINO IR (the engine loads it)"
    )
    export.add_argument("model", help="a diffusers folder, .safetensors/.ckpt file, hub id or 'demo'")
    export.add_argument("dir", type=Path, help="the folder to write (an earlier export there is replaced)")
    export.add_argument(
        "--precision",
        choices=[p.value for p in Precision],
        default=Precision.BF16.value,
        help="bf16 (default): int8 MatMul and fp16 other IR weights; f32: fp32 IR weights. The inference "
        "precision is chosen per CPU when the model loads.",
    )
    export.add_argument(
        "--weights",
        choices=[w.value for w in OpenVINOWeights],
        default=OpenVINOWeights.AUTO.value,
        help="the IR weights, as the engine's --openvino-weights: auto (int8 for bf16, fp32 for f32), int8, "
        "int8-hybrid (the UNet's convolutions int8 too, calibrated here), int8-full (its linear layers too), fp16, "
        "fp32",
    )
    export.add_argument("--models-dir", type=Path, default=Path("models"), help="where MODEL names are looked up")
    return parser


def _export_openvino(args: argparse.Namespace) -> None:
    try:
        from studio.engines.openvino_export import export_openvino
    except ImportError as exc:  # openvino (or torch) missing
        raise ModelLoadError(f"export-openvino needs the openvino package: pip install openvino ({exc})") from exc
    manifest = export_openvino(
        args.model, args.dir, precision=args.precision, weights=args.weights, models_dir=args.models_dir
    )
    for component in manifest.components:
        print(f"{component.name}\t{args.dir / component.ir_dir}")
    print(args.dir)


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status is 1 (with the reason on stderr) when it fails."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "build-demo":
            print(build_demo(args.dir, inpaint=args.inpaint))
        elif args.command == "build-demo-lora":
            print(build_demo_lora(args.path, seed=args.seed))
        elif args.command == "build-demo-vae":
            print(build_demo_vae(args.path))
        elif args.command == "build-demo-taesd":
            layout = "a1111" if args.a1111 else "folder"
            print(build_demo_taesd(args.models_dir, layout=layout, encoder=not args.decoder_only))
        elif args.command == "export-openvino":
            _export_openvino(args)
        else:
            found = discover_models(args.models_dir)
            for source in found:
                print(f"{source.name}\t{source.kind}\t{source.location}")
            if not found:
                print(f"no models in {args.models_dir} (the studio will use the built-in demo model)", file=sys.stderr)
    except (ModelLoadError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
