"""SD Studio benchmarks: ratios against raw diffusers, serving/UI/remote overheads, memory, and the OpenVINO
CPU fast path. Run `python -m bench` (full, ~20 min on 2 cores) or `python -m bench --quick` (~3 min); see
bench/README.md for every field of bench/results/latest.json.

Importing this package is light: torch, diffusers and openvino are imported by the sections that need them.
"""
