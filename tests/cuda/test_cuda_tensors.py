"""CUDA tensors: moving data, zero-copy interop in and out, device errors, modules and globals."""

from __future__ import annotations

import numpy as np
import pytest

import klflow as flow
import klflow.nn.functional as F


def test_moving_between_host_and_device():
    host = np.arange(6, dtype=np.float64).reshape(2, 3)
    t = flow.tensor(host, device="cuda")
    assert t.is_cuda and t.device == flow.device("cuda", 0) and t.shape == (2, 3)
    assert np.array_equal(t.cpu().numpy(), host) and not t.cpu().is_cuda
    assert np.array_equal(flow.tensor(host).cuda().numpy(), host)
    assert t.to("cuda:0") is t and t.to(flow.float32).dtype == flow.float32
    assert np.array_equal(t.half().float().numpy(), host.astype(np.float32))


def test_0d_tensors_stay_0d_on_the_device():
    for t in (flow.tensor(0.5, device="cuda"), flow.tensor(0.5).cuda(), flow.tensor(np.float64(2.0)).cuda()):
        assert t.shape == () and t.device.type == "cuda"
        assert t.numpy().shape == () and t.cpu().shape == ()
    assert float(flow.tensor(0.5).cuda().cpu().numpy()) == 0.5


def test_gradient_flows_back_across_devices():
    x = flow.tensor([0.5, 1.0], requires_grad=True)
    loss = F.kl_div(x.cuda(), flow.tensor([0.25, 0.75], device="cuda"), reduction="sum")
    loss.backward()
    assert not x.grad.is_cuda and x.grad.numpy().tolist() == [-0.25, -0.75]


def test_cuda_array_interface_is_read_without_a_copy():
    from numba import cuda

    device_array = cuda.to_device(np.array([0.1, 0.2, 0.7], np.float32))
    target = cuda.to_device(np.array([0.2, 0.2, 0.6], np.float32))
    out = F.kl_div(device_array, target, reduction="sum")  # array-likes straight into the loss
    assert out.is_cuda
    expected = np.sum(
        np.float64([0.2, 0.2, 0.6]) * (np.log([0.2, 0.2, 0.6]) - np.float64(np.float32([0.1, 0.2, 0.7])))
    )
    assert out.item() == pytest.approx(expected, rel=1e-6)


def test_klflow_cuda_tensors_export_the_interface(simulated):
    from numba import cuda

    if simulated:
        pytest.skip("numba's simulator arrays do not implement __cuda_array_interface__")
    t = flow.tensor([1.0, 2.0], device="cuda")
    interface = t.__cuda_array_interface__
    assert interface["shape"] == (2,) and interface["typestr"] == "<f4"
    view = cuda.as_cuda_array(t)
    assert view.__cuda_array_interface__["data"][0] == interface["data"][0]  # same memory
    with pytest.raises(AttributeError):
        flow.tensor([1.0]).__cuda_array_interface__


def test_inputs_on_different_devices_are_refused():
    with pytest.raises(ValueError, match=r"same device; got input on cuda:0 and target on cpu"):
        F.kl_div(flow.tensor([0.5], device="cuda"), flow.tensor([0.5]))


def test_bad_device_strings():
    with pytest.raises(ValueError, match="'gpu'"):
        flow.tensor([1.0], device="gpu")
    with pytest.raises(RuntimeError, match="cuda:7"):
        flow.tensor([1.0], device="cuda:7")


def test_module_cuda_moves_parameters():
    class Scaled(flow.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = flow.nn.Parameter(flow.tensor([1.0, 2.0]))

    module = Scaled().cuda()
    assert module.weight.is_cuda and isinstance(module.weight, flow.nn.Parameter)
    assert module.cpu().weight.device == flow.device("cpu")


def test_global_cuda_placement_on_one_rank():
    p = flow.placement("cuda", [0])
    x = flow.tensor([[0.5, 1.0]], device="cuda").to_global(p, flow.sbp.split(0))
    y = flow.tensor([[0.25, 0.75]], device="cuda").to_global(p, flow.sbp.split(0))
    x.requires_grad = True
    loss = F.kl_div(x, y, reduction="sum")
    assert loss.sbp == (flow.sbp.partial_sum,) and loss.to_local().is_cuda
    assert loss.item() == pytest.approx(0.25 * (np.log(0.25) - 0.5) + 0.75 * (np.log(0.75) - 1.0), rel=1e-6)
    loss.backward()
    assert x.grad.sbp == (flow.sbp.split(0),) and x.grad.to_local().is_cuda
    assert x.grad.numpy().tolist() == [[-0.25, -0.75]]
    b = x.detach().to_global(sbp=flow.sbp.broadcast)
    assert b.to_local().is_cuda and b.numpy().tolist() == [[0.5, 1.0]]


def test_device_buffers_are_reused_only_after_their_array_dies():
    import gc

    from klflow.kernels import cuda as kernels

    kernels.empty_cache()
    kept = kernels.full((4,), 1.0, np.float32)
    other = kernels.full((4,), 2.0, np.float32)  # kept is alive: this must be another buffer
    assert kept.copy_to_host().tolist() == [1.0] * 4
    del other
    gc.collect()
    assert len(kernels._free_buffers[16]) == 1  # returned to the cache, not to the driver
    reused = kernels.full((2, 2), 3.0, np.float32)
    assert len(kernels._free_buffers[16]) == 0 and reused.shape == (2, 2)
    assert kept.copy_to_host().tolist() == [1.0] * 4 and reused.copy_to_host().sum() == 12.0
    kernels.empty_cache()
    assert not any(kernels._free_buffers.values())


def test_launch_sizes_come_from_the_device(monkeypatch):
    from klflow.kernels import cuda as kernels

    kernels.set_block_size(None)
    monkeypatch.delenv("KLFLOW_CUDA_BLOCK", raising=False)
    hopper = (132, 2048, 1024)  # multiprocessors, threads per multiprocessor, threads per block
    monkeypatch.setattr(kernels, "_device_limits", lambda device_id: hopper)
    assert kernels.launch_config(1 << 28) == (132 * 8, 256)  # eight blocks of 256 per SM
    assert kernels.launch_config(1000) == (4, 256)  # never more blocks than the work needs
    smaller = (80, 1536, 1024)
    monkeypatch.setattr(kernels, "_device_limits", lambda device_id: smaller)
    # 1536 / 8 = 192 → 128 threads, a power of two; 80 * 12 blocks would leave a thread more
    # than TERMS_PER_THREAD terms, so there are more.
    assert kernels.TERMS_PER_THREAD == 2048
    assert kernels.launch_config(1 << 26) == (80 * 12, 128)
    assert kernels.launch_config(1 << 28) == ((1 << 28) // (128 * 2048), 128)
    monkeypatch.setenv("KLFLOW_CUDA_BLOCK", "64")
    assert kernels.launch_config(1 << 26) == (80 * 24, 64)
    for n in (1 << 33, (1 << 33) + 1, 10**10):  # however large, no thread sums more than its share
        blocks, threads = kernels.launch_config(n)
        assert -(-n // (blocks * threads)) <= kernels.TERMS_PER_THREAD
