"""Higher-order gradients: backward(create_graph=True), flow.autograd.grad (errors as PyTorch), and
second derivatives of the loss against float64 finite differences."""

from __future__ import annotations

import numpy as np
import pytest

import klflow as flow
import klflow.nn.functional as F

REDUCTIONS = ["none", "sum", "mean", "batchmean"]


def test_grad_returns_a_tuple_and_leaves_dot_grad_alone():
    x = flow.tensor([1.0, 2.0], dtype=flow.float64, requires_grad=True)
    y = flow.tensor([3.0, 4.0], dtype=flow.float64, requires_grad=True)
    out = (x * x * y).sum()
    gx, gy = flow.autograd.grad(out, [x, y])
    assert gx.tolist() == [6.0, 16.0] and gy.tolist() == [1.0, 4.0]
    assert x.grad is None and y.grad is None and not gx.requires_grad


def test_grad_errors_match_pytorch():
    x = flow.tensor([1.0], requires_grad=True)
    unused = flow.tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="index 0 appears to not have been used in the graph"):
        flow.autograd.grad((x * 2).sum(), unused)
    assert flow.autograd.grad((x * 2).sum(), [x, unused], allow_unused=True)[1] is None
    with pytest.raises(RuntimeError, match="One of the differentiated Tensors does not require grad"):
        flow.autograd.grad((x * 2).sum(), flow.tensor([1.0]))
    with pytest.raises(RuntimeError, match="element 0 of tensors does not require grad"):
        flow.autograd.grad(flow.tensor([1.0]).sum(), x)
    with pytest.raises(RuntimeError, match="grad can be implicitly created only for scalar outputs"):
        flow.autograd.grad(flow.tensor([1.0, 2.0], requires_grad=True) * 2, x)
    out = (x * 2).sum()
    flow.autograd.grad(out, x)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        flow.autograd.grad(out, x)


def test_grad_outputs_and_non_leaf_inputs():
    x = flow.tensor([1.0, 2.0], dtype=flow.float64, requires_grad=True)
    h = x * 3.0
    out = h * h
    (gh,) = flow.autograd.grad(out, h, grad_outputs=flow.tensor([1.0, 0.5], dtype=flow.float64))
    assert gh.tolist() == [6.0, 6.0]


def test_backward_create_graph_then_second_backward():
    x = flow.tensor([0.5, 2.0], dtype=flow.float64, requires_grad=True)
    (x.exp() * x).sum().backward(create_graph=True)
    first = x.grad
    assert first.requires_grad and np.allclose(first.numpy(), np.exp([0.5, 2.0]) * (1 + np.array([0.5, 2.0])))
    x.grad = None
    first.sum().backward()
    assert np.allclose(x.grad.numpy(), np.exp([0.5, 2.0]) * (2 + np.array([0.5, 2.0])))


def _kl64(x, y, reduction, log_target, weights):
    if log_target:
        e = np.exp(y) * (y - x)
    else:
        e = np.where(y > 0, y * (np.log(np.where(y > 0, y, 1.0)) - x), 0.0)
    if reduction == "none":
        return float(np.sum(e * weights))
    total = float(np.sum(e))
    return {"sum": total, "mean": total / e.size, "batchmean": total / e.shape[0]}[reduction]


def _fd_hessian_vector(f, z, v, h=1e-5):
    """Central differences of the directional derivative: d/dt grad f(z + t v) at t = 0."""

    def grad(point):
        out = np.empty_like(point)
        for i in range(point.size):
            e = np.zeros_like(point)
            e.flat[i] = h
            out.flat[i] = (f(point + e) - f(point - e)) / (2 * h)
        return out

    return (grad(z + h * v) - grad(z - h * v)) / (2 * h)


@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_kl_div_second_derivatives_against_finite_differences(reduction, log_target):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 2)) * 0.5
    y = rng.random((3, 2)) + 0.2 if not log_target else rng.standard_normal((3, 2)) * 0.5
    weights = rng.random((3, 2)) + 0.5  # a none loss is summed with weights
    v_x, v_y = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    tx = flow.tensor(x, requires_grad=True)
    ty = flow.tensor(y, requires_grad=True)
    loss = F.kl_div(tx, ty, reduction=reduction, log_target=log_target)
    if reduction == "none":
        loss = (loss * flow.tensor(weights)).sum()
    gx, gy = flow.autograd.grad(loss, [tx, ty], create_graph=True)
    # Hessian-vector product in the direction (v_x, v_y), by differentiating <grad, v>.
    directional = (gx * flow.tensor(v_x)).sum() + (gy * flow.tensor(v_y)).sum()
    hx, hy = flow.autograd.grad(directional, [tx, ty], allow_unused=True)
    z = np.concatenate([x.ravel(), y.ravel()])
    v = np.concatenate([v_x.ravel(), v_y.ravel()])

    def f(point):
        return _kl64(point[:6].reshape(3, 2), point[6:].reshape(3, 2), reduction, log_target, weights)

    want = _fd_hessian_vector(f, z, v)
    got_x = np.zeros(6) if hx is None else hx.numpy().ravel()
    got_y = np.zeros(6) if hy is None else hy.numpy().ravel()
    np.testing.assert_allclose(np.concatenate([got_x, got_y]), want, rtol=1e-4, atol=1e-5)


def test_first_order_values_keep_their_bits_under_create_graph():
    rng = np.random.default_rng(4)
    x = rng.standard_normal(7).astype(np.float32)
    y = rng.random(7).astype(np.float32)
    plain = flow.tensor(x, requires_grad=True)
    recorded = flow.tensor(x, requires_grad=True)
    F.kl_div(plain, flow.tensor(y), reduction="batchmean").backward()
    F.kl_div(recorded, flow.tensor(y, requires_grad=True), reduction="batchmean").backward(create_graph=True)
    assert plain.grad.numpy().tobytes() == recorded.grad.numpy().tobytes()


def test_gradient_of_gradient_with_respect_to_the_upstream_weight():
    x = flow.tensor([0.1, -0.3], dtype=flow.float64, requires_grad=True)
    y = flow.tensor([0.4, 0.6], dtype=flow.float64)
    w = flow.tensor(2.0, dtype=flow.float64, requires_grad=True)
    (gx,) = flow.autograd.grad(F.kl_div(x, y, reduction="sum") * w, x, create_graph=True)
    (gw,) = flow.autograd.grad(gx.sum(), w)
    assert gx.tolist() == [-0.8, -1.2] and gw.item() == pytest.approx(-1.0)


def test_retain_grad_keeps_a_non_leaf_gradient():
    x = flow.tensor([1.0, 2.0], requires_grad=True)
    h = x * 2
    h.retain_grad()
    assert h.retains_grad
    (h * h).sum().backward()
    assert h.grad.tolist() == [4.0, 8.0] and x.grad.tolist() == [8.0, 16.0]
    with pytest.raises(RuntimeError, match="requires_grad=False"):
        flow.tensor([1.0]).retain_grad()


def test_autograd_backward_of_several_outputs():
    x = flow.tensor([1.0, 2.0], dtype=flow.float64, requires_grad=True)
    a, b = (x * x).sum(), x * 3.0
    flow.autograd.backward([a, b], [None, flow.tensor([1.0, 0.5], dtype=flow.float64)])
    assert x.grad.tolist() == [2.0 + 3.0, 4.0 + 1.5]
    with pytest.raises(RuntimeError, match="grad can be implicitly created only for scalar outputs"):
        flow.autograd.backward(x * 2.0)


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides:UserWarning")  # PyTorch's own notice
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_second_derivatives_match_pytorch_where_installed(reduction, log_target):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3))
    y = rng.random((4, 3)) + 0.1 if not log_target else rng.standard_normal((4, 3))  # y > 0: they agree
    v = rng.standard_normal((4, 3))
    w = rng.random((4, 3)) + 0.5

    def hvp(module, make, kl):
        tx, ty = make(x), make(y)
        loss = kl(tx, ty)
        if reduction == "none":
            loss = (loss * make(w, False)).sum()
        gx, gy = module.autograd.grad(loss, [tx, ty], create_graph=True)
        total = (gx * make(v, False)).sum() + (gy * make(v, False)).sum()
        return [
            None if h is None else h.detach().numpy()
            for h in module.autograd.grad(total, [tx, ty], allow_unused=True)
        ]

    ours = hvp(
        flow,
        lambda a, g=True: flow.tensor(a, requires_grad=g),
        lambda a, b: F.kl_div(a, b, reduction, log_target),
    )
    theirs = hvp(
        torch,
        lambda a, g=True: torch.tensor(a, requires_grad=g),
        lambda a, b: torch.nn.functional.kl_div(a, b, reduction=reduction, log_target=log_target),
    )
    for got, want in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(
            np.zeros((4, 3)) if got is None else got,
            np.zeros((4, 3)) if want is None else want,
            rtol=1e-12,
            atol=1e-14,
        )
