"""Behaviour of ``klflow.nn.Module`` and ``klflow.nn.Parameter``, checked against what OneFlow and
PyTorch document for ``nn.Module``/``nn.Parameter``."""

from __future__ import annotations

import copy
import inspect
import pickle
from collections import OrderedDict

import numpy as np
import pytest

import klflow as flow
from klflow.nn.module import Module, RemovableHandle
from klflow.nn.parameter import Parameter
from klflow.tensor import Tensor


# ---------------------------------------------------------------------------- test modules
class Child(Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = Parameter(flow.tensor([[1.0, 2.0], [3.0, 4.0]]))
        self.register_buffer("running", flow.tensor([0.5, 0.25]))

    def forward(self, x):
        return x


class Net(Module):
    """A parameter, a persistent buffer, a non-persistent buffer and a child module."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = Parameter(flow.tensor([2.0]))
        self.register_buffer("count", flow.tensor([0.0]))
        self.register_buffer("scratch", flow.tensor([9.0]), persistent=False)
        self.child = Child()

    def forward(self, x, *rest, **kwargs):
        return ("out", x, rest, kwargs)


class Empty(Module):
    def forward(self, *args):
        return args


class KLDivLoss(Module):
    """Stands in for a parameterless loss with an empty extra_repr."""


class Described(Module):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def extra_repr(self) -> str:
        return self.text


def values(t: Tensor) -> list:
    return np.asarray(t.numpy()).tolist()


# ---------------------------------------------------------------------------- Parameter
class TestParameter:
    def test_is_a_tensor_sharing_the_data_of_the_tensor_given(self):
        array = np.array([1.0, 2.0], dtype=np.float64)
        source = flow.from_numpy(array)
        param = Parameter(source)
        assert isinstance(param, Tensor) and isinstance(param, Parameter)
        assert param.requires_grad and param.is_leaf and param.grad is None
        assert param.dtype == flow.float64 and tuple(param.shape) == (2,)
        array[0] = 7.0
        assert values(param) == [7.0, 2.0]

    def test_requires_grad_false(self):
        assert Parameter(flow.tensor([1.0]), requires_grad=False).requires_grad is False

    def test_a_parameter_made_from_a_graph_output_is_a_leaf(self):
        x = flow.tensor([1.0, 2.0], requires_grad=True)
        y = x.double()
        assert y.grad_fn is not None
        param = Parameter(y)
        assert param.is_leaf and param.grad_fn is None and param.requires_grad

    def test_array_like_data_is_copied_into_a_float32_tensor(self):
        data = [1.0, 2.0]
        param = Parameter(data)
        assert param.dtype == flow.float32 and values(param) == [1.0, 2.0]

    def test_no_data_gives_an_empty_parameter(self):
        param = Parameter()
        assert tuple(param.shape) == (0,) and param.dtype == flow.float32

    def test_repr_and_str_have_the_parameter_header(self):
        param = Parameter(flow.tensor([1.0, 2.0]))
        expected = "Parameter containing:\n" + Tensor.__repr__(param)
        assert repr(param) == expected
        assert str(param) == expected
        assert expected.endswith("requires_grad=True)")

    def test_detach_gives_a_plain_tensor(self):
        detached = Parameter(flow.tensor([1.0])).detach()
        assert type(detached) is Tensor and not detached.requires_grad


# ---------------------------------------------------------------------------- attributes
class TestAttributes:
    def test_assignment_registers_in_order(self):
        net = Net()
        assert list(net._parameters) == ["scale"]
        assert list(net._buffers) == ["count", "scratch"]
        assert net._non_persistent_buffers_set == {"scratch"}
        assert list(net._modules) == ["child"]
        assert "scale" not in net.__dict__ and "child" not in net.__dict__
        assert net.scale is net._parameters["scale"]
        assert net.count is net._buffers["count"]
        assert net.child is net._modules["child"]
        assert net.training is True

    def test_missing_attribute_message(self):
        with pytest.raises(AttributeError, match="^'Net' object has no attribute 'nothing'$"):
            Net().nothing

    def test_assigning_none_keeps_the_slot(self):
        net = Net()
        net.scale = None
        net.count = None
        net.child = None
        assert list(net._parameters.items()) == [("scale", None)]
        assert net._buffers["count"] is None
        assert net._modules["child"] is None
        assert net.scale is None and net.child is None
        assert [name for name, _ in net.named_parameters()] == []
        assert list(net.state_dict()) == []
        assert list(net.children()) == []

    def test_plain_tensor_to_a_parameter_name_is_a_type_error_naming_the_type(self):
        net = Net()
        with pytest.raises(TypeError) as err:
            net.scale = flow.tensor([1.0])
        assert "klflow.tensor.Tensor" in str(err.value) and "'scale'" in str(err.value)
        assert isinstance(net.scale, Parameter)

    def test_non_module_to_a_module_name_is_a_type_error(self):
        net = Net()
        with pytest.raises(TypeError, match="cannot assign 'int' as child module 'child'"):
            net.child = 3

    def test_non_tensor_to_a_buffer_name_is_a_type_error(self):
        net = Net()
        with pytest.raises(TypeError, match="cannot assign 'str' as buffer 'count'"):
            net.count = "zero"

    def test_tensor_to_a_buffer_name_replaces_the_buffer(self):
        net = Net()
        new = flow.tensor([5.0])
        net.scratch = new
        assert net._buffers["scratch"] is new
        assert net._non_persistent_buffers_set == {"scratch"}

    def test_plain_tensor_to_a_new_name_is_an_ordinary_attribute(self):
        net = Net()
        t = flow.tensor([1.0])
        net.cache = t
        assert net.__dict__["cache"] is t
        assert "cache" not in net._buffers and "cache" not in net._parameters

    def test_parameter_replaces_a_buffer_or_attribute_of_the_same_name(self):
        net = Net()
        net.plain = 3
        net.plain = Parameter(flow.tensor([1.0]))
        net.count = Parameter(flow.tensor([1.0]))
        assert "plain" not in net.__dict__
        assert "count" not in net._buffers
        assert list(net._parameters) == ["scale", "plain", "count"]

    def test_module_replaces_a_parameter_of_the_same_name(self):
        net = Net()
        net.scratch = Empty()
        assert "scratch" not in net._buffers and "scratch" not in net._non_persistent_buffers_set
        assert list(net._modules) == ["child", "scratch"]

    def test_assignment_before_init_is_an_attribute_error(self):
        class Early(Module):
            def __init__(self) -> None:
                self.weight = Parameter(flow.tensor([1.0]))

        with pytest.raises(AttributeError, match="before Module.__init__"):
            Early()

    def test_delattr(self):
        net = Net()
        del net.scale
        del net.scratch
        del net.child
        assert "scale" not in net._parameters
        assert "scratch" not in net._buffers and not net._non_persistent_buffers_set
        assert "child" not in net._modules
        net.plain = 1
        del net.plain
        with pytest.raises(AttributeError):
            del net.never_set

    def test_dir_lists_members_and_skips_numeric_names(self):
        net = Net()
        net.add_module("0", Empty())
        names = dir(net)
        assert names == sorted(names)
        for name in ("scale", "count", "scratch", "child", "forward", "training", "state_dict"):
            assert name in names
        assert "0" not in names


# ---------------------------------------------------------------------------- registration
class TestRegistration:
    def test_add_module(self):
        net = Net()
        extra = Empty()
        net.add_module("extra", extra)
        net.add_module("child", None)  # an existing child's name may be reused
        assert net.extra is extra and net._modules["child"] is None
        assert list(net._modules) == ["child", "extra"]

    @pytest.mark.parametrize(
        ("name", "module", "error", "pattern"),
        [
            ("bad", 3, TypeError, "int is not a Module subclass"),
            (1, Empty(), TypeError, "module name should be a string. Got int"),
            ("a.b", Empty(), KeyError, 'can\'t contain ".", got: a.b'),
            ("", Empty(), KeyError, "module name can't be empty string"),
            ("training", Empty(), KeyError, "attribute 'training' already exists"),
            ("scale", Empty(), KeyError, "attribute 'scale' already exists"),
        ],
    )
    def test_add_module_errors(self, name, module, error, pattern):
        with pytest.raises(error) as err:
            Net().add_module(name, module)
        assert pattern in err.value.args[0]  # str() of a KeyError is the repr of its message

    def test_register_buffer_persistence_can_change(self):
        net = Net()
        net.register_buffer("scratch", flow.tensor([1.0]))
        assert "scratch" not in net._non_persistent_buffers_set
        net.register_buffer("count", None, persistent=False)
        assert net.count is None and "count" in net._non_persistent_buffers_set

    @pytest.mark.parametrize(
        ("name", "value", "error", "pattern"),
        [
            (2, flow.tensor([1.0]), TypeError, "buffer name should be a string. Got int"),
            ("a.b", flow.tensor([1.0]), KeyError, "got: a.b"),
            ("", flow.tensor([1.0]), KeyError, "buffer name can't be empty string"),
            ("child", flow.tensor([1.0]), KeyError, "attribute 'child' already exists"),
            ("data", [1.0], TypeError, "cannot assign 'list' object to buffer 'data'"),
        ],
    )
    def test_register_buffer_errors(self, name, value, error, pattern):
        with pytest.raises(error) as err:
            Net().register_buffer(name, value)
        assert pattern in err.value.args[0]  # str() of a KeyError is the repr of its message

    def test_register_parameter(self):
        net = Net()
        bias = Parameter(flow.tensor([0.0]))
        net.register_parameter("bias", bias)
        net.register_parameter("unused", None)
        assert net.bias is bias and net._parameters["unused"] is None
        assert [name for name, _ in net.named_parameters(recurse=False)] == ["scale", "bias"]

    @pytest.mark.parametrize(
        ("name", "value", "error", "pattern"),
        [
            (2, Parameter(flow.tensor([1.0])), TypeError, "Got int"),
            ("a.b", Parameter(flow.tensor([1.0])), KeyError, "got: a.b"),
            ("", Parameter(flow.tensor([1.0])), KeyError, "empty string"),
            ("count", Parameter(flow.tensor([1.0])), KeyError, "attribute 'count' already exists"),
            (
                "w",
                flow.tensor([1.0]),
                TypeError,
                "cannot assign 'klflow.tensor.Tensor' object to "
                "parameter 'w' (klflow.nn.Parameter or None required)",
            ),
        ],
    )
    def test_register_parameter_errors(self, name, value, error, pattern):
        with pytest.raises(error) as err:
            Net().register_parameter(name, value)
        assert pattern in err.value.args[0]  # str() of a KeyError is the repr of its message

    def test_register_before_init(self):
        module = Module.__new__(Module)
        with pytest.raises(AttributeError, match="cannot assign buffer before"):
            module.register_buffer("b", flow.tensor([1.0]))
        with pytest.raises(AttributeError, match="cannot assign parameter before"):
            module.register_parameter("p", None)


# ---------------------------------------------------------------------------- calling & hooks
class TestCallAndHooks:
    def test_base_forward_names_the_class(self):
        class NoForward(Module):
            pass

        with pytest.raises(NotImplementedError, match=r"Module \[NoForward\] is missing"):
            NoForward()(1)

    def test_call_passes_args_and_kwargs(self):
        assert Net()(1, 2, k=3) == ("out", 1, (2,), {"k": 3})

    def test_hook_order_replacement_and_arguments(self):
        net = Net()
        calls = []

        def pre_first(module, args):
            calls.append(("pre_first", args))
            return args[0] + 10  # a single value: wrapped into a 1-tuple

        def pre_second(module, args):
            calls.append(("pre_second", args))
            return None  # keeps the arguments

        def pre_third(module, args):
            calls.append(("pre_third", args))
            return (args[0], "extra")

        def post_first(module, args, output):
            calls.append(("post_first", args, output))
            return ("replaced", output)

        def post_second(module, args, output):
            calls.append(("post_second", output))

        for hook in (pre_first, pre_second, pre_third):
            net.register_forward_pre_hook(hook)
        for hook in (post_first, post_second):
            net.register_forward_hook(hook)
        result = net(1, 2, k=3)
        forward_output = ("out", 11, ("extra",), {"k": 3})
        assert calls == [
            ("pre_first", (1, 2)),
            ("pre_second", (11,)),
            ("pre_third", (11,)),
            ("post_first", (11, "extra"), forward_output),
            ("post_second", ("replaced", forward_output)),
        ]
        assert result == ("replaced", forward_output)

    def test_handles_remove_hooks(self):
        net = Empty()
        seen = []
        pre = net.register_forward_pre_hook(lambda m, args: seen.append("pre"))
        post = net.register_forward_hook(lambda m, args, out: seen.append("post"))
        assert isinstance(pre, RemovableHandle) and pre.id != post.id
        net(1)
        pre.remove()
        pre.remove()  # a second removal does nothing
        net(1)
        post.remove()
        net(1)
        assert seen == ["pre", "post", "post"]
        assert not net._forward_hooks and not net._forward_pre_hooks

    def test_handle_as_context_manager(self):
        net = Empty()
        with net.register_forward_hook(lambda m, args, out: "hooked") as handle:
            assert isinstance(handle, RemovableHandle)
            assert net(1) == "hooked"
        assert net(1) == (1,)

    def test_a_hook_may_remove_itself_while_running(self):
        net = Empty()
        seen = []
        handles = {}

        def once(module, args, output):
            seen.append("once")
            handles["once"].remove()

        handles["once"] = net.register_forward_hook(once)
        net.register_forward_hook(lambda m, args, out: seen.append("always"))
        net(1)
        net(1)
        assert seen == ["once", "always", "always"]

    def test_hooks_see_real_tensors(self):
        loss = KLDivLoss()
        loss.forward = lambda x: x.double()
        loss.register_forward_hook(lambda m, args, out: out.float())
        result = loss(flow.tensor([1.0]))
        assert result.dtype == flow.float32


# ---------------------------------------------------------------------------- traversal
def make_shared():
    """A root with two children sharing one grandchild, one parameter and one buffer."""
    root = Empty()
    shared_module = Child()
    shared_param = Parameter(flow.tensor([1.0]))
    shared_buffer = flow.tensor([2.0])
    root.a = Empty()
    root.b = Empty()
    root.a.inner = shared_module
    root.b.inner = shared_module
    root.a.p = shared_param
    root.b.p = shared_param
    root.a.register_buffer("buf", shared_buffer)
    root.b.register_buffer("buf", shared_buffer)
    root.b.own = Parameter(flow.tensor([3.0]))
    return root, shared_module, shared_param, shared_buffer


class TestTraversal:
    def test_children_and_named_children(self):
        net = Net()
        net.add_module("empty", None)
        net.twin = net.child
        assert list(net.named_children()) == [("child", net.child)]
        assert list(net.children()) == [net.child]

    def test_named_modules_is_depth_first_and_deduplicated(self):
        root, shared, _, _ = make_shared()
        assert [(name, type(m).__name__) for name, m in root.named_modules()] == [
            ("", "Empty"),
            ("a", "Empty"),
            ("a.inner", "Child"),
            ("b", "Empty"),
        ]
        assert list(root.modules()) == [root, root.a, shared, root.b]
        assert [name for name, _ in root.named_modules(prefix="net")] == [
            "net",
            "net.a",
            "net.a.inner",
            "net.b",
        ]
        assert [name for name, _ in root.named_modules(remove_duplicate=False)] == [
            "",
            "a",
            "a.inner",
            "b",
            "b.inner",
        ]

    def test_named_modules_memo(self):
        root, shared, _, _ = make_shared()
        memo = {root.a}
        assert [name for name, _ in root.named_modules(memo=memo)] == ["", "b", "b.inner"]
        assert memo == {root, root.a, root.b, shared}

    def test_named_parameters_deduplicates_and_prefixes(self):
        root, shared, param, _ = make_shared()
        named = list(root.named_parameters())
        assert [name for name, _ in named] == ["a.p", "a.inner.weight", "b.own"]
        assert named[0][1] is param and named[1][1] is shared.weight
        assert list(root.parameters()) == [param, shared.weight, root.b.own]
        assert [name for name, _ in root.named_parameters(prefix="m")] == [
            "m.a.p",
            "m.a.inner.weight",
            "m.b.own",
        ]
        assert [name for name, _ in root.named_parameters(remove_duplicate=False)] == [
            "a.p",
            "a.inner.weight",
            "b.p",
            "b.own",
            "b.inner.weight",
        ]
        assert list(root.named_parameters(recurse=False)) == []
        assert [name for name, _ in root.b.named_parameters(recurse=False)] == ["p", "own"]

    def test_buffers_include_non_persistent_ones(self):
        net = Net()
        assert [name for name, _ in net.named_buffers()] == ["count", "scratch", "child.running"]
        assert list(net.buffers()) == [net.count, net.scratch, net.child.running]
        assert list(net.buffers(recurse=False)) == [net.count, net.scratch]
        root, _, _, buffer = make_shared()
        assert [name for name, _ in root.named_buffers()] == ["a.buf", "a.inner.running"]
        assert next(root.buffers()) is buffer

    def test_named_members(self):
        net = Net()
        found = list(net._named_members(lambda m: m._buffers.items(), prefix="x", recurse=False))
        assert [name for name, _ in found] == ["x.count", "x.scratch"]

    def test_apply_visits_children_first_then_self_and_returns_self(self):
        root = Empty()
        root.first = Empty()
        root.first.leaf = Child()
        root.second = Child()
        visited = []
        assert root.apply(visited.append) is root
        assert visited == [root.first.leaf, root.first, root.second, root]


# ---------------------------------------------------------------------------- modes & grads
class TestModesAndGrads:
    def test_train_and_eval_propagate_and_return_self(self):
        net = Net()
        assert net.eval() is net
        assert [m.training for m in net.modules()] == [False, False]
        assert net.train() is net
        assert [m.training for m in net.modules()] == [True, True]
        assert net.train(False) is net and not net.child.training

    @pytest.mark.parametrize("mode", [1, "yes", None])
    def test_train_validates_mode(self, mode):
        with pytest.raises(ValueError, match="training mode is expected to be boolean"):
            Net().train(mode)

    def test_zero_grad_default_is_set_to_none_false(self):
        assert inspect.signature(Module.zero_grad).parameters["set_to_none"].default is False

    def test_zero_grad_fills_zeros_in_the_same_grad_object(self):
        net = Net()
        gradient = flow.tensor([[3.0, 4.0], [5.0, 6.0]])
        net.child.weight.backward(gradient)
        grad = net.child.weight.grad
        assert values(grad) == [[3.0, 4.0], [5.0, 6.0]]
        net.zero_grad()
        assert net.child.weight.grad is grad
        assert values(grad) == [[0.0, 0.0], [0.0, 0.0]]
        assert grad.dtype == flow.float32 and not grad.requires_grad
        assert net.scale.grad is None  # a parameter without a gradient keeps None
        # The tensor given to backward() is never written to.
        assert values(gradient) == [[3.0, 4.0], [5.0, 6.0]]

    def test_zero_grad_handles_read_only_gradients(self):
        net = Net()
        frozen = np.ones(1, dtype=np.float32)
        frozen.flags.writeable = False
        net.scale.grad = flow.from_numpy(frozen)
        net.zero_grad(set_to_none=False)
        assert values(net.scale.grad) == [0.0] and frozen[0] == 1.0

    def test_zero_grad_detaches_a_gradient_with_history(self):
        net = Net()
        source = flow.tensor([2.0], requires_grad=True)
        net.scale.grad = source.double().float()
        assert net.scale.grad.grad_fn is not None
        net.zero_grad()
        assert net.scale.grad.grad_fn is None and values(net.scale.grad) == [0.0]
        assert values(source) == [2.0]

    def test_zero_grad_set_to_none(self):
        net = Net()
        net.scale.backward(flow.tensor([1.0]))
        net.child.weight.backward(flow.tensor([[1.0, 1.0], [1.0, 1.0]]))
        net.zero_grad(set_to_none=True)
        assert all(p.grad is None for p in net.parameters())

    def test_requires_grad_(self):
        net = Net()
        assert net.requires_grad_(False) is net
        assert not any(p.requires_grad for p in net.parameters())
        net.requires_grad_()
        assert all(p.requires_grad for p in net.parameters())


# ---------------------------------------------------------------------------- casts
class TestCasts:
    @pytest.mark.parametrize(
        ("method", "dtype"),
        [("double", flow.float64), ("half", flow.float16), ("float", flow.float32)],
    )
    def test_casts_convert_every_tensor_keep_parameters_and_convert_grads(self, method, dtype):
        net = Net().double() if method == "float" else Net()
        net.child.weight.requires_grad = False
        net.scale.backward(flow.tensor([1.5], dtype=net.scale.dtype))
        scale, weight = net.scale, net.child.weight
        assert getattr(net, method)() is net
        assert net.scale is scale and net.child.weight is weight
        assert isinstance(net.scale, Parameter)
        assert net.scale.requires_grad and not net.child.weight.requires_grad
        tensors = [net.scale, net.child.weight, net.count, net.scratch, net.child.running]
        assert all(t.dtype == dtype for t in tensors)
        assert net.scale.grad.dtype == dtype and values(net.scale.grad) == [1.5]
        assert not net.scale.grad.requires_grad
        assert values(net.child.weight) == [[1.0, 2.0], [3.0, 4.0]]
        assert values(net.child.running) == [0.5, 0.25]

    def test_converted_parameters_record_no_graph(self):
        net = Net().double()
        assert net.scale.grad_fn is None and net.scale.is_leaf

    def test_same_dtype_is_a_no_op(self):
        net = Net()
        count = net.count
        net.float()
        assert net.count is count

    @pytest.mark.parametrize(
        ("args", "kwargs"),
        [
            ((flow.float64,), {}),
            ((), {"dtype": flow.float64}),
            (("cpu", flow.float64), {}),
            (("cpu",), {"dtype": flow.float64}),
            ((), {"device": "cpu", "dtype": flow.float64}),
            ((flow.tensor([1.0], dtype=flow.float64),), {}),
            ((), {"tensor": flow.tensor([1.0], dtype=flow.float64)}),
        ],
    )
    def test_to(self, args, kwargs):
        net = Net()
        assert net.to(*args, **kwargs) is net
        assert {t.dtype for t in [*net.parameters(), *net.buffers()]} == {flow.float64}
        assert {str(t.device) for t in [*net.parameters(), *net.buffers()]} == {"cpu"}

    def test_to_cpu_and_cpu_return_self(self):
        net = Net()
        scale = net.scale
        assert net.to("cpu") is net and net.cpu() is net
        assert net.scale is scale and net.scale.dtype == flow.float32

    @pytest.mark.parametrize(
        ("args", "kwargs", "error"),
        [
            ((3.5,), {}, TypeError),
            ((), {"dtype": np.int64}, TypeError),
            ((), {"memory": 1}, TypeError),
            (("tpu",), {}, ValueError),
        ],
    )
    def test_to_rejects_bad_arguments(self, args, kwargs, error):
        with pytest.raises(error):
            Net().to(*args, **kwargs)

    def test_shared_tensors_are_converted_once(self):
        root, shared, param, buffer = make_shared()
        calls = []

        def convert(t):
            calls.append(id(t))
            return t.double()

        assert root._apply(convert) is root
        assert len(calls) == len(set(calls)) == 5  # p, buf, weight, running, own
        assert root.a.p is root.b.p is param and param.dtype == flow.float64
        assert root.a.buf is root.b.buf and root.a.buf is not buffer
        assert root.a.buf.dtype == flow.float64 and buffer.dtype == flow.float32

    def test_apply_without_recursion(self):
        net = Net()
        net._apply(lambda t: t.double(), recurse=False)
        assert net.scale.dtype == flow.float64 and net.child.weight.dtype == flow.float32

    def test_cuda_raises_what_tensor_cuda_raises(self):
        try:
            flow.tensor([1.0]).cuda()
        except Exception as expected:  # noqa: BLE001 - whatever this machine raises
            with pytest.raises(type(expected)) as got:
                Net().cuda()
            assert str(got.value) == str(expected)
            with pytest.raises(type(expected)):
                Net().cuda(0)
        else:
            pytest.skip("a CUDA device is available here; CUDA moves are tested elsewhere")

    def test_cuda_without_tensors_returns_self(self):
        module = Empty()
        assert module.cuda() is module

    def test_to_consistent_is_gone(self):
        with pytest.raises(RuntimeError) as err:
            Net().to_consistent(flow.placement("cpu", [0]), flow.sbp.broadcast)
        message = str(err.value)
        assert "no longer available" in message and "to_global()" in message


class TestToGlobal:
    def test_to_global_on_one_rank(self):
        net = Net()
        net.scale.backward(flow.tensor([1.0]))
        scale = net.scale
        placement = flow.placement("cpu", [0])
        assert net.to_global(placement=placement, sbp=flow.sbp.broadcast) is net
        tensors = [*net.parameters(), *net.buffers()]
        assert all(t.is_global for t in tensors)
        assert all(t.placement == placement for t in tensors)
        assert all(tuple(t.sbp) == (flow.sbp.broadcast,) for t in tensors)
        assert net.scale is scale and isinstance(net.child.weight, Parameter)
        assert net.scale.requires_grad and net.scale.grad.is_global
        assert values(net.child.weight.to_local()) == [[1.0, 2.0], [3.0, 4.0]]
        assert net.to_local() is net
        assert not any(t.is_global for t in [*net.parameters(), *net.buffers()])
        assert values(net.child.weight) == [[1.0, 2.0], [3.0, 4.0]]

    def test_global_state_dict_round_trip_on_one_rank(self):
        placement = flow.placement("cpu", [0])
        source = Net()
        source.scale = Parameter(flow.tensor([7.0]))
        source.to_global(placement=placement, sbp=flow.sbp.broadcast)
        target = Net().to_global(placement=placement, sbp=flow.sbp.split(0))
        target.load_state_dict(source.state_dict())
        assert values(target.scale.to_local()) == [7.0]
        assert tuple(target.scale.sbp) == (flow.sbp.split(0),)
        with pytest.raises(RuntimeError, match='local / global mismatch for "scale"'):
            target.load_state_dict(Net().state_dict())


# ---------------------------------------------------------------------------- state dict
class TestStateDict:
    def test_keys_order_and_values(self):
        net = Net()
        state = net.state_dict()
        assert type(state) is OrderedDict
        assert list(state) == ["scale", "count", "child.weight", "child.running"]
        assert values(state["child.weight"]) == [[1.0, 2.0], [3.0, 4.0]]
        assert state._metadata == {"": {"version": 1}, "child": {"version": 1}}

    def test_values_are_detached_but_share_memory(self):
        net = Net()
        state = net.state_dict()
        assert type(state["scale"]) is Tensor and not state["scale"].requires_grad
        assert np.shares_memory(state["scale"].numpy(), net.scale.numpy())
        kept = net.state_dict(keep_vars=True)
        assert kept["scale"] is net.scale and kept["count"] is net.count

    def test_prefix_and_destination(self):
        net = Net()
        destination = OrderedDict(before=1)
        result = net.state_dict(destination, prefix="net.")
        assert result is destination
        assert list(result) == [
            "before",
            "net.scale",
            "net.count",
            "net.child.weight",
            "net.child.running",
        ]

    def test_save_to_state_dict_covers_only_the_module_itself(self):
        destination = OrderedDict()
        Net()._save_to_state_dict(destination, "p.", False)
        assert list(destination) == ["p.scale", "p.count"]

    def test_round_trip_copies_in_place(self):
        source = Net()
        source.scale = Parameter(flow.tensor([5.0]))
        source.count = flow.tensor([3.0])
        source.child.weight = Parameter(flow.tensor([[9.0, 8.0], [7.0, 6.0]]))
        target = Net()
        weight, weight_memory = target.child.weight, target.child.weight.numpy()
        result = target.load_state_dict(source.state_dict())
        assert result == ([], []) and result.missing_keys == [] and result.unexpected_keys == []
        assert repr(result) == "<All keys matched successfully>"
        assert target.child.weight is weight
        assert values(weight) == [[9.0, 8.0], [7.0, 6.0]] and weight_memory[0, 0] == 9.0
        assert values(target.scale) == [5.0] and values(target.count) == [3.0]
        assert target.state_dict().keys() == source.state_dict().keys()
        assert values(target.scratch) == [9.0]  # non-persistent: untouched

    def test_load_casts_and_accepts_arrays(self):
        net = Net()
        net.load_state_dict(
            {
                "scale": flow.tensor([1.25], dtype=flow.float64),
                "count": np.array([4]),
                "child.weight": [[0.0, 1.0], [2.0, 3.0]],
                "child.running": np.array([1.0, 2.0], dtype=np.float16),
            }
        )
        assert net.scale.dtype == flow.float32 and values(net.scale) == [1.25]
        assert values(net.count) == [4.0]
        assert values(net.child.weight) == [[0.0, 1.0], [2.0, 3.0]]
        assert values(net.child.running) == [1.0, 2.0]

    def test_strict_error_lists_missing_and_unexpected_keys(self):
        state = Net().state_dict()
        del state["child.running"]
        del state["count"]
        state["extra"] = flow.tensor([0.0])
        state["child.bias"] = flow.tensor([0.0])
        state["scratch"] = flow.tensor([0.0])  # non-persistent buffers are not loaded
        state["scale.inner"] = flow.tensor([0.0])  # a parameter has no members
        state["child"] = flow.tensor([0.0])  # a module is not a tensor
        state["other.weight"] = flow.tensor([0.0])  # no such child
        with pytest.raises(RuntimeError) as err:
            Net().load_state_dict(state)
        assert str(err.value) == (
            "Error(s) in loading state_dict for Net:\n\t"
            'Missing key(s) in state_dict: "count", "child.running". \n\t'
            'Unexpected key(s) in state_dict: "extra", "scratch", "scale.inner", "child", '
            '"other.weight", "child.bias". '
        )

    def test_non_strict_reports_keys_and_loads_the_rest(self):
        state = OrderedDict(scale=flow.tensor([6.0]), bogus=flow.tensor([1.0]))
        net = Net()
        result = net.load_state_dict(state, strict=False)
        assert result.missing_keys == ["count", "child.weight", "child.running"]
        assert result.unexpected_keys == ["bogus"]
        assert "missing_keys=['count'" in repr(result)
        assert values(net.scale) == [6.0]

    def test_size_mismatch_raises_even_when_not_strict(self):
        state = Net().state_dict()
        state["child.weight"] = flow.tensor([1.0, 2.0])
        net = Net()
        with pytest.raises(RuntimeError) as err:
            net.load_state_dict(state, strict=False)
        assert (
            "size mismatch for child.weight: copying a param with shape [2] from checkpoint, "
            "the shape in current model is [2, 2]."
        ) in str(err.value)

    def test_failed_copy_is_reported_with_the_key(self):
        net = Net()
        frozen = np.zeros(1, dtype=np.float32)
        frozen.flags.writeable = False
        net.count = flow.from_numpy(frozen)
        with pytest.raises(RuntimeError, match='While copying the parameter named "count"'):
            net.load_state_dict(Net().state_dict())

    def test_non_numeric_value_is_reported(self):
        state = Net().state_dict()
        state["scale"] = "two"
        with pytest.raises(RuntimeError, match=r'parameter named "scale".*received str'):
            Net().load_state_dict(state)

    def test_state_dict_must_be_a_mapping(self):
        with pytest.raises(TypeError, match="Expected state_dict to be dict-like, got list"):
            Net().load_state_dict([("scale", flow.tensor([1.0]))])

    def test_none_slots_are_neither_saved_nor_expected(self):
        net = Net()
        net.scale = None
        assert "scale" not in net.state_dict()
        assert net.load_state_dict(Net().state_dict(), strict=False).unexpected_keys == ["scale"]


# ---------------------------------------------------------------------------- printing
class TestRepr:
    def test_module_without_children_or_extra_repr(self):
        assert repr(KLDivLoss()) == "KLDivLoss()"
        assert repr(Module()) == "Module()"
        assert KLDivLoss()._get_name() == "KLDivLoss" and KLDivLoss().extra_repr() == ""

    def test_the_real_loss_prints_like_oneflow(self):
        assert repr(flow.nn.KLDivLoss(reduction="sum")) == "KLDivLoss()"

    def test_single_line_extra_repr_stays_inline(self):
        assert repr(Described("reduction=sum")) == "Described(reduction=sum)"

    def test_nested_modules(self):
        root = Described("top=1")
        root.loss = KLDivLoss()
        root.block = Empty()
        root.block.inner = Described("a=1\nb=2")
        root.block.add_module("missing", None)
        assert repr(root) == (
            "Described(\n"
            "  top=1\n"
            "  (loss): KLDivLoss()\n"
            "  (block): Empty(\n"
            "    (inner): Described(\n"
            "      a=1\n"
            "      b=2\n"
            "    )\n"
            "    (missing): None\n"
            "  )\n"
            ")"
        )
        assert str(root) == repr(root) and format(root) == repr(root)
        assert f"{root}" == repr(root)

    def test_net_repr(self):
        assert repr(Net()) == "Net(\n  (child): Child()\n)"

    def test_shallow_repr_leaves_children_out(self):
        root = Described("x=1")
        root.child = KLDivLoss()
        assert root._shallow_repr() == "Described(x=1)"
        assert Described("a\nb")._shallow_repr() == "Described(\n  a\n  b\n)"
        assert Empty()._shallow_repr() == "Empty()"


# ---------------------------------------------------------------------------- object protocol
class TestObjectProtocol:
    def test_equality_and_hash_are_identity(self):
        first, second = Net(), Net()
        assert first == first and first != second
        assert hash(first) == object.__hash__(first)
        assert len({first, second, first}) == 2

    def test_sizeof(self):
        assert isinstance(Net().__sizeof__(), int) and Net().__sizeof__() > 0

    def test_pickle_round_trip(self):
        net = Net().eval()
        net.scale.backward(flow.tensor([1.0]))
        restored = pickle.loads(pickle.dumps(net))
        assert type(restored) is Net and type(restored.child) is Child
        assert restored.training is False and restored.child.training is False
        assert isinstance(restored.scale, Parameter) and restored.scale.requires_grad
        assert values(restored.scale.grad) == [1.0]
        assert list(restored.state_dict()) == list(net.state_dict())
        assert restored._non_persistent_buffers_set == {"scratch"}
        assert values(restored.child.weight) == [[1.0, 2.0], [3.0, 4.0]]
        assert restored(1) == ("out", 1, (), {})

    def test_reduce_ex_and_deepcopy(self):
        net = Net()
        assert callable(net.__reduce_ex__(2)[0])
        clone = copy.deepcopy(net)
        assert clone.scale is not net.scale
        assert not np.shares_memory(clone.scale.numpy(), net.scale.numpy())
        assert values(clone.scale) == values(net.scale)

    def test_hooks_are_dropped_with_a_warning_when_copied(self):
        net = Empty()
        net.register_forward_hook(lambda m, args, out: "hooked")
        with pytest.warns(UserWarning, match="forward hooks"):
            restored = pickle.loads(pickle.dumps(net))
        assert restored(1) == (1,) and net(1) == "hooked"
        handle = restored.register_forward_pre_hook(lambda m, args: (2,))
        assert restored(1) == (2,)
        handle.remove()
