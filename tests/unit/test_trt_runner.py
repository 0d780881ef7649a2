"""The TensorRT runner's own logic, on CPU through stand-ins for the engine, the execution context and the
stream (TensorRT cannot be installed here; tests/gpu runs the real one): buffers in the declared dtypes, one
binding per input shape, one execution context per calling thread, the profile enforced."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest
import torch

from model_registry.trt import TensorRTRunner


class _Trt:
    @staticmethod
    def nptype(t):
        return {"half": np.float16, "float": np.float32}[t]


class _Context:
    """Records what the runner asks of a context; 'executes' by reading the bound input tensor."""

    def __init__(self, runner):
        self.runner, self.shape, self.addresses, self.calls = runner, None, {}, []

    def set_input_shape(self, name, shape):
        self.shape = tuple(shape)
        self.calls.append(("shape", self.shape))

    def get_tensor_shape(self, name):
        return (self.shape[0], 1)

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def execute_async_v3(self, stream):
        bound = next(b for s in self.runner._all_slots for b in s.shapes.values()
                     if b.dev_in.data_ptr() == self.addresses["features"])
        assert bound.dev_out.data_ptr() == self.addresses["prob"]
        bound.dev_out.copy_((bound.dev_in.float().sum(dim=1, keepdim=True) * 2).to(bound.dev_out.dtype))
        return True


class _Engine:
    def __init__(self, runner):
        self.runner, self.contexts = runner, 0

    def get_tensor_dtype(self, name):
        return "half" if name == "prob" else "float"

    def get_tensor_profile_shape(self, name, i):
        return (1, 3), (8, 3), (16, 3)

    def create_execution_context(self):
        self.contexts += 1
        return _Context(self.runner)


class _Stream:
    cuda_stream = 0

    def synchronize(self):
        pass


class _CpuRunner(TensorRTRunner):
    device = "cpu"

    def __init__(self):  # what TensorRTRunner.__init__ sets, with the stand-ins
        self.torch, self.trt, self.input, self.output, self.cuda_graph = torch, _Trt, "features", "prob", False
        self.engine, self._local, self._all_slots = _Engine(self), threading.local(), []

    def _new_stream(self):
        return _Stream()

    def _on(self, stream):
        return contextlib.nullcontext()

    def _slot(self):
        slot = super()._slot()
        if slot not in self._all_slots:
            self._all_slots.append(slot)
        return slot


def test_buffers_follow_declared_dtypes_and_each_shape_is_bound_once():
    r = _CpuRunner()
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = r.infer(x)
    assert out.dtype == np.float32 and np.allclose(out, x.sum(1, keepdims=True) * 2)
    (slot,) = r._all_slots
    b = slot.shapes[(4, 3)]
    assert b.host_out.dtype is torch.float16 and b.dev_in.dtype is torch.float32  # the engine's declared dtypes
    r.infer(np.ones((2, 3), np.float32))
    again = r.infer(x)  # back to a bound shape: the same buffers, re-pointed
    assert np.allclose(again, out) and set(slot.shapes) == {(4, 3), (2, 3)}
    assert slot.shapes[(4, 3)] is b and slot.context.addresses["features"] == b.dev_in.data_ptr()


def test_the_profile_is_enforced_with_its_bounds_named():
    r = _CpuRunner()
    with pytest.raises(ValueError, match=r"outside the engine's profile \[\(1, 3\), \(16, 3\)\]"):
        r.infer(np.ones((17, 3), np.float32))
    with pytest.raises(ValueError, match="outside"):
        r.infer(np.ones((2, 4), np.float32))


def test_one_execution_context_per_calling_thread():
    r = _CpuRunner()
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(r.infer(np.full((1, 3), i, np.float32))))
               for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert r.engine.contexts == 3 and sorted(float(o[0, 0]) for o in results) == [0.0, 6.0, 12.0]
