"""Glue shared by every Python model and Python-based backend: code that only runs inside a Triton stub.

`triton_python_backend_utils` exists only there, so it is imported inside the functions. One request loop
(`respond_each`) isolates each request's failure with the right code: a client error (`RequestError`, named
field) is INVALID_ARG, a server-side condition (`StepUnavailable`) UNAVAILABLE, anything else INTERNAL and
logged with its traceback through `pb_utils.Logger` (the server's own log).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping

import numpy as np

from widefunnel.validation import RequestError


class StepUnavailable(RuntimeError):
    """The step cannot answer now for a reason that is not the client's (e.g. a half-finished swap)."""


def error_response(message: str, code: str = "INVALID_ARG"):
    import triton_python_backend_utils as pb_utils

    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, getattr(pb_utils.TritonError, code)))


def log_error(message: str) -> None:
    import triton_python_backend_utils as pb_utils

    pb_utils.Logger.log_error(message)


# An error's text travels back in a gRPC status (metadata, a few KiB at most): longer, the client would get
# RESOURCE_EXHAUSTED instead of the reason. Messages quote client values through `validation.shown`; this cut
# is the last guard for text from elsewhere (a library's exception).
MAX_ERROR_CHARS = 1000


def _short(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else f"{text[:MAX_ERROR_CHARS - 3]}..."


def failure_response(model: str, exc: BaseException):
    """The response for one request that raised `exc`."""
    if isinstance(exc, RequestError):
        return error_response(_short(f"{model}: {exc}"), "INVALID_ARG")
    if isinstance(exc, StepUnavailable):
        return error_response(_short(f"{model}: {exc}"), "UNAVAILABLE")
    log_error(f"{model}: {''.join(traceback.format_exception(exc))}")
    return error_response(_short(f"{model}: internal error: {type(exc).__name__}: {exc}"), "INTERNAL")


def respond_each(requests: list, handle: Callable[[object], list], model: str) -> list:
    """One response per request, in order: `handle(request)` returns its output tensors; a request that
    raises fails alone."""
    import triton_python_backend_utils as pb_utils

    responses = []
    for request in requests:
        try:
            responses.append(pb_utils.InferenceResponse(output_tensors=handle(request)))
        except Exception as exc:  # noqa: BLE001 - each failure becomes this request's error response
            responses.append(failure_response(model, exc))
    return responses


def request_inputs(request) -> dict[str, object]:
    """A request's input tensors by name, listed once: `pb_utils.get_input_tensor_by_name` lists and wraps
    every input of the request again on each call (a step reading 11 inputs made 121 tensor wrappers)."""
    return {tensor.name(): tensor for tensor in request.inputs()}


def input_array(inputs: Mapping[str, object], name: str) -> np.ndarray | None:
    """An input of ``inputs`` (`request_inputs`) as numpy (None when the optional input is absent). Inputs
    arrive on the GPU only when the config sets FORCE_CPU_ONLY_INPUT_TENSORS "no"; those are copied to the
    host here. A request in place of ``inputs`` is still read, for the `model.py` copies of repositories built
    before `request_inputs` existed (a build copies its model files; the package they import is upgraded)."""
    if isinstance(inputs, Mapping):
        tensor = inputs.get(name)
    else:
        import triton_python_backend_utils as pb_utils

        tensor = pb_utils.get_input_tensor_by_name(inputs, name)
    if tensor is None:
        return None
    if tensor.is_cpu():
        return tensor.as_numpy()
    import torch.utils.dlpack

    return torch.utils.dlpack.from_dlpack(tensor.to_dlpack()).cpu().numpy()


def required_array(inputs: Mapping[str, object], name: str) -> np.ndarray:
    array = input_array(inputs, name)
    if array is None:
        raise RequestError(f"{name}: required input is missing")
    return array
