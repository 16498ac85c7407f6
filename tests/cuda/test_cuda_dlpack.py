"""DLPack of CUDA tensors: the device numbers everywhere; the capsules themselves need a GPU
(numba's simulator has no device memory to share), where they view the same pointer."""

from __future__ import annotations

import numpy as np
import pytest

import klflow as flow
from klflow.utils import dlpack


def test_cuda_tensors_report_their_dlpack_device():
    t = flow.tensor([1.0, 2.0], device="cuda")
    assert t.__dlpack_device__() == (dlpack.CUDA_DEVICE, 0)


def test_cuda_capsules_share_the_device_pointer(simulated):
    t = flow.tensor(np.arange(6.0, dtype=np.float32).reshape(2, 3), device="cuda")
    if simulated:
        with pytest.raises(BufferError, match="no device memory to share"):
            t.__dlpack__()
        return
    capsule = t.__dlpack__()
    fields = dlpack.capsule_fields(capsule)
    assert fields["data"] == t.__cuda_array_interface__["data"][0]
    assert fields["device"] == (dlpack.CUDA_DEVICE, t.device.index or 0)
    assert fields["shape"] == (2, 3) and fields["dtype"] == np.float32
    back = flow.from_dlpack(capsule)
    assert back.__cuda_array_interface__["data"][0] == fields["data"]
    assert back.numpy().tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
