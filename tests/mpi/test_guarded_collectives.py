"""Every collective is agreed first: a diverged program is one clear error on every rank, never a
wrong value or a hang; 0-d tensors stay 0-d through every layout."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import assert_everywhere, raises_everywhere
from helpers import as_global, seeded

import klflow as flow
import klflow.nn.functional as F
from klflow.distributed import comm
from klflow.distributed.comm import CollectiveError, CollectiveMismatchError


@pytest.fixture
def several(world):
    rank, size = world
    if size < 2:
        pytest.skip("needs at least 2 ranks")
    return rank, size


def _losses():
    x = as_global(seeded((7, 3)), flow.sbp.split(0))
    y = as_global(seeded((7, 3), positive=True, seed=3), flow.sbp.split(0))
    return x, y, F.kl_div(x, y, reduction="sum"), F.kl_div(x, y, reduction="mean")


# ----------------------------------------------------------------- diverged programs
def test_materialising_in_a_different_order_is_an_error_not_a_wrong_value(several):
    rank, _ = several
    _, _, a, b = _losses()
    first, second = (a, b) if rank == 0 else (b, a)
    text = raises_everywhere(
        CollectiveMismatchError,
        r"different klflow collectives.*rank 0: item\(\) of tensor #\d+.*rank 1: item\(\) of tensor #\d+",
        lambda: (first.item(), second.item()),
    )
    numbers = {f"#{a._global_id}", f"#{b._global_id}"}
    assert_everywhere(all(n in text for n in numbers), text)


def test_numpy_of_different_tensors_is_an_error(several):
    rank, _ = several
    x, y, _, _ = _losses()
    raises_everywhere(
        CollectiveMismatchError, r"numpy\(\) of tensor", lambda: (x if rank == 0 else y).numpy()
    )


@pytest.mark.parametrize("other", ["to_global", "kl_div", "numpy", "backward"])
def test_item_against_any_other_call_is_an_error_on_every_rank(several, other):
    rank, _ = several
    x, y, loss, _ = _losses()
    x.requires_grad = True
    loss = F.kl_div(x, y, reduction="sum")
    others = {
        "to_global": lambda: x.to_global(sbp=flow.sbp.broadcast),
        "kl_div": lambda: F.kl_div(x, y),
        "numpy": lambda: y.numpy(),
        "backward": lambda: loss.backward(),
    }
    pattern = {
        "to_global": "to_global",
        "kl_div": "kl_div",
        "numpy": r"numpy\(\)",
        "backward": r"backward\(\)",
    }
    raises_everywhere(
        CollectiveMismatchError,
        rf"rank 0: item\(\) of tensor #{loss._global_id}.*rank 1: {pattern[other]}",
        loss.item if rank == 0 else others[other],
    )


def test_a_rank_that_skips_a_call_is_found_at_its_next_call(several):
    rank, _ = several
    x, _, loss, _ = _losses()

    def program():
        if rank != 1:
            loss.item()  # rank 1 skips this
        x.numpy()

    raises_everywhere(CollectiveMismatchError, r"rank 0: item\(\).*rank 1: numpy\(\)", program)


def test_local_tensors_to_kl_div_on_one_rank_are_found_at_its_next_collective(several):
    rank, _ = several
    x, y, _, _ = _losses()
    local_x, local_y = x.to_local(), y.to_local()

    def program():
        if rank == 0:
            F.kl_div(local_x, local_y, reduction="sum").item()  # local: no collective on rank 0
            x.numpy()
        else:
            F.kl_div(x, y, reduction="sum")

    raises_everywhere(CollectiveMismatchError, r"rank 0: numpy\(\).*rank 1: kl_div", program)


def test_requires_grad_on_one_rank_only_is_refused_before_any_backward(several):
    rank, _ = several
    full = seeded((6, 4))
    x = as_global(full, flow.sbp.split(0), requires_grad=True)
    y = as_global(seeded((6, 4), positive=True, seed=2), flow.sbp.split(1))
    y.requires_grad = rank == 0  # the target's gradient would need an all-to-all on rank 0 only
    raises_everywhere(CollectiveMismatchError, r"rank 0: kl_div.*requiring grad", lambda: F.kl_div(x, y))


def test_backward_of_different_losses_is_an_error(several):
    rank, _ = several
    x = as_global(seeded((5, 2)), flow.sbp.split(0), requires_grad=True)
    y = as_global(seeded((5, 2), positive=True, seed=2), flow.sbp.split(0))
    a, b = F.kl_div(x, y, reduction="sum"), F.kl_div(x, y, reduction="mean")
    raises_everywhere(CollectiveMismatchError, r"rank 0: backward\(\)", (a if rank == 0 else b).backward)
    assert_everywhere(x.grad is None, "no gradient was accumulated")


def test_a_bad_gradient_on_one_rank_stops_every_rank(several):
    rank, _ = several
    x = as_global(seeded((5, 2)), flow.sbp.split(0), requires_grad=True)
    y = as_global(seeded((5, 2), positive=True, seed=2), flow.sbp.split(0))
    loss = F.kl_div(x, y, reduction="sum")
    gradient = flow.tensor(1.0) if rank == 0 else None  # a local gradient for a global loss
    text = raises_everywhere(
        CollectiveError,
        r"backward\(\) failed: rank 0: RuntimeError: gradient must be global",
        lambda: loss.backward(gradient),
    )
    assert_everywhere("rank 1" not in text, text)
    loss.backward()  # the graph is intact: every rank can still run it
    assert_everywhere(x.grad is not None)


def test_backward_twice_without_retain_graph_is_the_same_error_everywhere(world):
    x = as_global(seeded((5, 2)), flow.sbp.split(0), requires_grad=True)
    y = as_global(seeded((5, 2), positive=True, seed=2), flow.sbp.split(0))
    loss = F.kl_div(x, y, reduction="sum")
    loss.backward()
    raises_everywhere(RuntimeError, r"backward through the graph a second time", loss.backward)


# ----------------------------------------------------------------- problems on one rank
class _Unconvertible:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __array__(self, dtype=None, copy=None):
        raise self.error


@pytest.mark.parametrize("error", [RuntimeError("no array today"), MemoryError("out of memory today")])
def test_any_exception_converting_an_argument_on_one_rank_reaches_every_rank(several, error):
    rank, _ = several
    x, y, _, _ = _losses()
    target = _Unconvertible(error) if rank == 1 else y
    name = type(error).__name__
    raises_everywhere(
        CollectiveError, rf"kl_div failed: rank 1: {name}: {error}", lambda: F.kl_div(x, target)
    )


def test_an_unknown_keyword_to_to_global_on_one_rank_reaches_every_rank(several):
    rank, _ = several
    x, _, _, _ = _losses()
    local = flow.from_numpy(np.zeros((2, 2), np.float32))
    extra = {"bogus": 1} if rank == 0 else {}
    raises_everywhere(
        TypeError,
        r"rank 0: to_global\(\) got unexpected keyword arguments \['bogus'\]",
        lambda: x.to_global(sbp=flow.sbp.broadcast, **extra),
    )
    raises_everywhere(
        TypeError,
        r"rank 0: to_global\(\) got unexpected keyword arguments \['bogus'\]",
        lambda: local.to_global(flow.placement.all("cpu"), flow.sbp.broadcast, **extra),
    )


def test_a_memory_error_preparing_a_collective_on_one_rank_reaches_every_rank(several, monkeypatch):
    rank, _ = several
    x, _, _, _ = _losses()
    if rank == 1:
        real = np.concatenate

        def refuse(*args, **kwargs):
            raise MemoryError("cannot allocate the send buffer")

        monkeypatch.setattr(np, "concatenate", refuse)
    try:
        raises_everywhere(
            CollectiveError,
            r"rank 1: MemoryError: cannot allocate the send buffer",
            lambda: x.to_global(sbp=flow.sbp.split(1)),
        )
    finally:
        if rank == 1:
            monkeypatch.setattr(np, "concatenate", real)
    assert_everywhere(np.isfinite(x.to_global(sbp=flow.sbp.split(1)).numpy()).all(), "still in step")


# ----------------------------------------------------------------- threads
def test_two_threads_calling_item_never_get_a_wrong_value(several):
    x, y, _, _ = _losses()
    expected = {red: F.kl_div(x, y, reduction=red).item() for red in ("sum", "mean")}
    wrong, errors, right = [], [], []

    def work(reduction):
        for _ in range(20):
            try:
                value = F.kl_div(x, y, reduction=reduction).item()
            except CollectiveMismatchError as err:
                errors.append(str(err))
                continue
            (right if value == expected[reduction] else wrong).append(value)

    threads = [threading.Thread(target=work, args=(red,), name=f"worker-{red}") for red in ("sum", "mean")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert_everywhere(not wrong, f"wrong values: {wrong[:3]}")
    assert_everywhere(all("thread 'worker-" in e for e in errors), f"{errors[:1]}")
    assert_everywhere(len(right) + len(errors) == 40, f"{len(right)} right, {len(errors)} errors")
    assert_everywhere(
        F.kl_div(x, y, reduction="sum").item() == expected["sum"], "the ranks are still in step"
    )


# ----------------------------------------------------------------- 0-d tensors
def test_a_0d_tensor_broadcast_from_local(world):
    rank, size = world
    value = 0.5 if rank == 0 else 7.0  # the first rank's value wins
    t = flow.tensor(value).to_global(flow.placement.all("cpu"), flow.sbp.broadcast)
    out = t.numpy()
    assert_everywhere(t.shape == () and out.shape == () and float(out) == 0.5, f"{t.shape} {out!r}")
    assert_everywhere(t.to_local().shape == (), f"{t.to_local().shape}")


@pytest.mark.parametrize("source", ["B", "P"])
@pytest.mark.parametrize("target", ["B", "P"])
@pytest.mark.parametrize("ranks", ["all", "first", "last"])
def test_every_0d_layout_and_edge_keeps_shape_and_value(world, source, target, ranks):
    rank, size = world
    sbps = {"B": flow.sbp.broadcast, "P": flow.sbp.partial_sum}
    placements = {"all": list(range(size)), "first": [0], "last": [size - 1]}
    placement = flow.placement("cpu", placements[ranks])
    full = np.array(2.5, np.float32)
    t = as_global(full, sbps[source], placement)
    assert_everywhere(t.shape == () and t.numpy().shape == (), f"{source}: {t.numpy()!r}")
    for destination in (placement, flow.placement.all("cpu"), flow.placement("cpu", [size - 1])):
        moved = t.to_global(placement=destination, sbp=sbps[target])
        value = moved.numpy()
        ok = moved.shape == () and value.shape == () and float(value) == 2.5
        assert_everywhere(ok, f"{source}->{target} on {destination}: {value!r}")
        inside = destination.index_of(rank) is not None
        assert_everywhere(not inside or moved.to_local().shape == (), f"{moved.to_local().shape}")


def test_a_0d_partial_sum_materialises_as_0d(world):
    rank, size = world
    t = flow.tensor(1.0).to_global(flow.placement.all("cpu"), flow.sbp.partial_sum)
    out = t.numpy()
    assert_everywhere(out.shape == () and float(out) == size, f"{out!r}")
    assert_everywhere(t.item() == size)


def test_a_reduced_loss_of_broadcast_inputs_on_a_smaller_placement(world):
    rank, size = world
    placement = flow.placement("cpu", [0])
    x_full, y_full = seeded((4, 3)), seeded((4, 3), positive=True, seed=2)
    x = as_global(x_full, flow.sbp.broadcast, placement)
    y = as_global(y_full, flow.sbp.broadcast, placement)
    loss = F.kl_div(x, y, reduction="mean")
    local = F.kl_div(flow.from_numpy(x_full), flow.from_numpy(y_full), reduction="mean")
    out = loss.numpy()
    assert_everywhere(out.shape == () and out.tobytes() == local.numpy().tobytes(), f"{out!r}")
    assert_everywhere(loss.item() == local.item())


def test_module_to_global_broadcasts_0d_buffers(world):
    module = flow.nn.Module()
    module.register_buffer("scale", flow.tensor(3.0))
    module.register_buffer("table", flow.tensor([1.0, 2.0]))
    module.to_global(flow.placement.all("cpu"), flow.sbp.broadcast)
    scale = module.scale.numpy()
    assert_everywhere(scale.shape == () and float(scale) == 3.0, f"{scale!r}")
    assert_everywhere(module.table.numpy().tolist() == [1.0, 2.0])


# ----------------------------------------------------------------- agreements are counted
def test_materialising_a_loss_is_one_agreement_and_one_all_reduce(world):
    _, _, loss, _ = _losses()
    comm.reset_counts()
    loss.item()
    counts = dict(comm.collective_counts)
    assert_everywhere(counts == {"agreement": 1, "allreduce": 1}, f"{counts}")
