"""Putting an exported GLNet to work in an application.

- `serving.predictor`: the in-process `Predictor` (images in, top-k classes out, the
  preprocessing read from the artifact) that an app embeds; `serving.slot_maps` draws the
  semantic slots of a feature artifact. Both sit on `runtimes`, and the two servers below
  sit on them.
- `serving.ray_app`: a Ray Serve application (replicas, request batching, HTTP), for one
  machine or a Ray cluster. Needs `pip install 'glnet-export[serve]'`.
- `serving.triton_repo`: a Triton Inference Server model repository entry (config.pbtxt
  checked against Triton's ModelConfig protobuf). Needs `pip install 'glnet-export[triton]'`.

Neither Ray nor tritonclient is imported by `import serving`: each is imported when its
part is first used, and a missing one says what to install.
"""

from __future__ import annotations

from typing import Any

_APP = ("ClassScore", "Prediction", "Predictor")
_RAY = ("ServeInfo", "ServeOptions", "build_app", "query", "start", "stop")
_TRITON = ("TritonOptions", "TritonRepoError", "TritonRepoResult", "write_triton_repo")


def __getattr__(name: str) -> Any:
    if name in _APP:
        from . import prediction, predictor

        return getattr(predictor if name == "Predictor" else prediction, name)
    if name in _RAY:
        from . import ray_app

        return getattr(ray_app, name)
    if name in _TRITON:
        from . import triton_repo

        return getattr(triton_repo, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [*_APP, *_RAY, *_TRITON]
