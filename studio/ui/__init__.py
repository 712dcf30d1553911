"""The Gradio studio. Depends only on studio.types / studio.engine and the controller, never on diffusers or boto3."""

from studio.ui.blocks import build_ui
from studio.ui.controller import StudioController

__all__ = ["StudioController", "build_ui"]
