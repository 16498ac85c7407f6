"""klflow.torch.kl_div: torch tensors in and out, torch autograd through klflow's gradient;
gradients equal torch.nn.functional.kl_div's where OneFlow and PyTorch agree (docs/semantics.md)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import klflow.torch as kt  # noqa: E402

REDUCTIONS = ["none", "sum", "mean", "batchmean"]


def _pair(dtype, log_target, seed=0, shape=(6, 9)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    y = (
        torch.randn(shape, generator=g, dtype=dtype)
        if log_target
        else torch.rand(shape, generator=g, dtype=dtype)
    )
    return x, y + (0 if log_target else 0.01)  # targets above 0: where OneFlow and PyTorch agree


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")  # torch's note on 'mean'
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_values_and_gradients_equal_pytorch(reduction, log_target, dtype):
    x0, y0 = _pair(dtype, log_target)
    x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    ours = kt.kl_div(x, y, reduction=reduction, log_target=log_target)
    xt, yt = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    theirs = torch.nn.functional.kl_div(xt, yt, reduction=reduction, log_target=log_target)
    assert isinstance(ours, torch.Tensor) and ours.dtype == dtype and ours.shape == theirs.shape
    assert ours.grad_fn is not None
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=tol, atol=tol)
    upstream = torch.randn(theirs.shape, dtype=dtype, generator=torch.Generator().manual_seed(9))
    (ours * upstream).sum().backward()
    (theirs * upstream).sum().backward()
    torch.testing.assert_close(x.grad, xt.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(y.grad, yt.grad, rtol=tol, atol=tol)


def test_a_torch_model_trains_through_the_loss():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 4, dtype=torch.float64)
    features = torch.randn(8, 5, dtype=torch.float64)
    target = torch.softmax(torch.randn(8, 4, dtype=torch.float64), dim=1)
    reference = torch.nn.Linear(5, 4, dtype=torch.float64)
    reference.load_state_dict(model.state_dict())
    loss = kt.kl_div(torch.log_softmax(model(features), dim=1), target, reduction="batchmean")
    loss.backward()
    want = torch.nn.functional.kl_div(
        torch.log_softmax(reference(features), dim=1), target, reduction="batchmean"
    )
    want.backward()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(model.weight.grad, reference.weight.grad)
    torch.testing.assert_close(model.bias.grad, reference.bias.grad)


def test_oneflow_semantics_where_pytorch_differs():
    x = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    y = torch.tensor([0.0, -0.5, 0.25])
    loss = kt.kl_div(x, y, reduction="sum")
    loss.backward()
    assert loss.item() == pytest.approx(0.25 * (np.log(0.25) - 2.0))  # zero and negative targets add 0
    assert x.grad.tolist() == [0.0, 0.0, -0.25]  # masked where the target is not positive


def test_memory_is_shared_and_input_only_gradients():
    x = torch.randn(4, 3, requires_grad=True)
    y = torch.rand(4, 3)
    out = kt.kl_div(x, y, reduction="none")
    out.sum().backward()
    assert y.grad is None and x.grad is not None
    torch.testing.assert_close(x.grad, -y)


def test_errors():
    x = torch.randn(3)
    with pytest.raises(ValueError, match="is not a valid value for reduction"):
        kt.kl_div(x, x, reduction="avg")
    with pytest.raises(ValueError, match="same shape"):
        kt.kl_div(x, torch.randn(4))
    with pytest.raises(TypeError, match="same dtype"):
        kt.kl_div(x, x.double())
    with pytest.raises(TypeError, match="expects torch tensors"):
        kt.kl_div(x, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="placement and sbp go together"):
        kt.kl_div(x, x, placement=object())


def test_a_second_torch_derivative_is_refused_not_wrong():
    x = torch.randn(3, requires_grad=True)
    loss = kt.kl_div(x, torch.rand(3), reduction="sum")
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="does not require grad"):
        g.sum().backward()


def test_bfloat16_and_float16_tensors():
    for dtype, tol in ((torch.bfloat16, 2e-2), (torch.float16, 2e-3)):
        x0, y0 = _pair(torch.float32, False, seed=3)
        x = x0.to(dtype).requires_grad_()
        y = y0.to(dtype)
        loss = kt.kl_div(x, y, reduction="sum")
        assert loss.dtype == dtype
        loss.backward()
        assert x.grad.dtype == dtype
        want = torch.nn.functional.kl_div(x.detach().double(), y.double(), reduction="sum")
        assert abs(loss.double().item() - want.item()) <= tol * abs(want.item())
        torch.testing.assert_close(x.grad, (-y.double()).to(dtype))
