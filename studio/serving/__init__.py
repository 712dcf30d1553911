"""The serving side: what a container (SageMaker or any host) runs around the engine.

- `invoker`: decode -> generate -> encode (`Invoker`, `RequestCodec`, error mapping); no web framework.
- `app`: the FastAPI app, GET /ping and POST /invocations (`create_app`).
- `toolkit`: the SageMaker PyTorch toolkit handlers (model_fn/transform_fn), shipped as
  code/inference.py.
- `__main__`: `python -m studio.serving` and the `serve` console script.

Importing this package imports nothing heavy (no FastAPI, torch or boto3); import the module you need.
"""
