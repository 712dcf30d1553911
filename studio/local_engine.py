"""`from studio.local_engine import LocalEngine`: the diffusers engine, which lives in studio.engines.local.

Build engines with `studio.engines.build(settings)`; this name stays for code that constructs one directly.
"""

from studio.engines.local import Accelerator, AcceleratorStatus, LocalEngine

__all__ = ["Accelerator", "AcceleratorStatus", "LocalEngine"]
