"""``Module``: the base class of klflow's neural-network layers and losses, as in OneFlow.

A module owns three ordered collections -- parameters, buffers and child modules -- filled by
plain attribute assignment. Everything else (iteration, ``state_dict``, casts, train/eval mode,
hooks, printing) walks those collections.

>>> import klflow as flow
>>> class Scale(flow.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.factor = flow.nn.Parameter(flow.tensor([2.0]))
...         self.register_buffer("calls", flow.tensor([0.0]))
...     def forward(self, x):
...         return x
>>> model = Scale()
>>> list(model.state_dict().keys())
['factor', 'calls']
>>> model
Scale()
"""

from __future__ import annotations

import contextvars
import itertools
import warnings
import weakref
from collections import OrderedDict, namedtuple
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Self

import numpy as np

from klflow import conversion, dtypes
from klflow.autograd import graph
from klflow.device import device as Device
from klflow.nn.parameter import Parameter
from klflow.tensor import Tensor, tensor

__all__ = ["Module", "RemovableHandle"]

ForwardPreHook = Callable[["Module", tuple[Any, ...]], Any]
ForwardHook = Callable[["Module", tuple[Any, ...], Any], Any]


class RemovableHandle:
    """What ``register_forward_hook``/``register_forward_pre_hook`` return: removes the hook.

    Usable as a context manager, which removes the hook on exit.

    >>> import klflow as flow
    >>> module = flow.nn.Module()
    >>> with module.register_forward_hook(lambda m, args, out: None):
    ...     len(module._forward_hooks)
    1
    >>> len(module._forward_hooks)
    0
    """

    _next_id = itertools.count()

    def __init__(self, hooks_dict: OrderedDict[int, Callable[..., Any]]) -> None:
        # A weak reference, so that a handle kept by the caller does not keep a dead module's
        # hook table alive.
        self.hooks_dict_ref = weakref.ref(hooks_dict)
        self.id = next(RemovableHandle._next_id)

    def remove(self) -> None:
        """Unregister the hook (doing nothing if it is already gone)."""
        hooks_dict = self.hooks_dict_ref()
        if hooks_dict is not None and self.id in hooks_dict:
            del hooks_dict[self.id]

    def __enter__(self) -> RemovableHandle:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.remove()


class _IncompatibleKeys(namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])):
    """The ``(missing_keys, unexpected_keys)`` named tuple that ``load_state_dict`` returns."""

    __slots__ = ()

    def __repr__(self) -> str:
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return super().__repr__()

    __str__ = __repr__


def _addindent(text: str, spaces: int) -> str:
    """Indent every line of ``text`` but the first (a child's repr nested in its parent's)."""
    first, *rest = text.split("\n")
    if not rest:
        return text
    return first + "\n" + "\n".join(" " * spaces + line for line in rest)


def _type_name(value: Any) -> str:
    """A value's type as a qualified name (``klflow.tensor.Tensor``, ``int``) for messages."""
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


# The tensors already converted by the ``_apply`` in progress, by ``id`` of the original: a
# parameter or buffer shared by several modules is converted once, and every module ends up
# holding the same converted object. Kept outside the modules so no attribute appears on them.
_applied_tensors: contextvars.ContextVar[dict[int, tuple[Tensor, Tensor]] | None] = contextvars.ContextVar(
    "klflow_nn_applied_tensors", default=None
)


class Module:
    """Base class for all neural-network modules; subclass it and define :meth:`forward`.

    Parameters, buffers and submodules assigned as attributes are registered, and then take
    part in :meth:`parameters`, :meth:`state_dict`, :meth:`to` and the other methods.
    ``super().__init__()`` must run before the first such assignment.

    >>> import klflow as flow
    >>> class Leaf(flow.nn.Module):
    ...     def forward(self, x):
    ...         return x
    >>> class Pair(flow.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.left = Leaf()
    ...         self.right = Leaf()
    >>> Pair()
    Pair(
      (left): Leaf()
      (right): Leaf()
    )

    Attributes:
        training: ``True`` in training mode, ``False`` in evaluation mode (see :meth:`train`).
    """

    _version: int = 1  # recorded in state_dict metadata, as PyTorch and OneFlow do

    training: bool
    _parameters: OrderedDict[str, Parameter | None]
    _buffers: OrderedDict[str, Tensor | None]
    _non_persistent_buffers_set: set[str]
    _modules: OrderedDict[str, Module | None]
    _forward_hooks: OrderedDict[int, ForwardHook]
    _forward_pre_hooks: OrderedDict[int, ForwardPreHook]

    def __init__(self) -> None:
        # object.__setattr__: our __setattr__ inspects these very dictionaries.
        set_plain = super().__setattr__
        set_plain("training", True)
        set_plain("_parameters", OrderedDict())
        set_plain("_buffers", OrderedDict())
        set_plain("_non_persistent_buffers_set", set())
        set_plain("_modules", OrderedDict())
        set_plain("_forward_hooks", OrderedDict())
        set_plain("_forward_pre_hooks", OrderedDict())

    # ------------------------------------------------------------------------ calling
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The computation of the module; every subclass defines it.

        Call the module itself (``module(x)``) rather than ``forward``, so that hooks run.
        """
        raise NotImplementedError(
            f'Module [{type(self).__name__}] is missing the required "forward" function'
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the forward pre-hooks, :meth:`forward`, then the forward hooks.

        A pre-hook ``hook(module, args)`` may return replacement positional arguments (a value
        that is not a tuple is wrapped in one); a hook ``hook(module, args, output)`` may return
        a replacement output. Keyword arguments go to ``forward`` only.
        """
        # Iterate over snapshots: a hook may remove itself (or another) while running.
        for hook in list(self._forward_pre_hooks.values()):
            replacement = hook(self, args)
            if replacement is not None:
                args = replacement if isinstance(replacement, tuple) else (replacement,)
        output = self.forward(*args, **kwargs)
        for hook in list(self._forward_hooks.values()):
            replacement = hook(self, args, output)
            if replacement is not None:
                output = replacement
        return output

    def register_forward_pre_hook(self, hook: ForwardPreHook) -> RemovableHandle:
        """Register ``hook(module, args) -> None | new args``, run before every :meth:`forward`.

        >>> import klflow as flow
        >>> class Identity(flow.nn.Module):
        ...     def forward(self, x):
        ...         return x
        >>> module = Identity()
        >>> handle = module.register_forward_pre_hook(lambda m, args: args[0] * 2)
        >>> module(3)
        6
        >>> handle.remove(); module(3)
        3
        """
        handle = RemovableHandle(self._forward_pre_hooks)
        self._forward_pre_hooks[handle.id] = hook
        return handle

    def register_forward_hook(self, hook: ForwardHook) -> RemovableHandle:
        """Register ``hook(module, args, output) -> None | new output``, run after :meth:`forward`.

        >>> import klflow as flow
        >>> class Identity(flow.nn.Module):
        ...     def forward(self, x):
        ...         return x
        >>> module = Identity()
        >>> handle = module.register_forward_hook(lambda m, args, out: out + 1)
        >>> module(3)
        4
        """
        handle = RemovableHandle(self._forward_hooks)
        self._forward_hooks[handle.id] = hook
        return handle

    # ------------------------------------------------------------------------ registration
    def _check_member_name(self, name: Any, kind: str, registry: Mapping[str, Any]) -> None:
        """The name checks shared by ``register_parameter``/``register_buffer``/``add_module``."""
        if not isinstance(name, str):
            raise TypeError(f"{kind} name should be a string. Got {_type_name(name)}")
        if "." in name:
            raise KeyError(f'{kind} name can\'t contain ".", got: {name}')
        if name == "":
            raise KeyError(f'{kind} name can\'t be empty string ""')
        if hasattr(self, name) and name not in registry:
            raise KeyError(f"attribute '{name}' already exists")

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Add ``param`` as parameter ``name`` (``None`` keeps an empty slot, left out of
        ``state_dict`` and of casts).

        >>> import klflow as flow
        >>> module = flow.nn.Module()
        >>> module.register_parameter("bias", flow.nn.Parameter(flow.tensor([0.0])))
        >>> [name for name, _ in module.named_parameters()]
        ['bias']
        """
        if "_parameters" not in self.__dict__:
            raise AttributeError("cannot assign parameter before Module.__init__() call")
        self._check_member_name(name, "parameter", self._parameters)
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(
                f"cannot assign '{_type_name(param)}' object to parameter '{name}' "
                f"(klflow.nn.Parameter or None required)"
            )
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        """Add ``tensor`` as buffer ``name``: module state that is not a parameter.

        A non-persistent buffer (``persistent=False``) is left out of :meth:`state_dict`; a
        ``None`` buffer is an empty slot.

        >>> import klflow as flow
        >>> module = flow.nn.Module()
        >>> module.register_buffer("running_mean", flow.tensor([0.0]))
        >>> module.register_buffer("scratch", flow.tensor([0.0]), persistent=False)
        >>> list(module.state_dict())
        ['running_mean']
        """
        if "_buffers" not in self.__dict__:
            raise AttributeError("cannot assign buffer before Module.__init__() call")
        self._check_member_name(name, "buffer", self._buffers)
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(
                f"cannot assign '{_type_name(tensor)}' object to buffer '{name}' "
                f"(klflow.Tensor or None required)"
            )
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent_buffers_set.discard(name)
        else:
            self._non_persistent_buffers_set.add(name)

    def add_module(self, name: str, module: Module | None) -> None:
        """Add ``module`` as child ``name`` (``None`` keeps an empty slot).

        >>> import klflow as flow
        >>> parent = flow.nn.Module()
        >>> parent.add_module("inner", flow.nn.Module())
        >>> parent
        Module(
          (inner): Module()
        )
        """
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{_type_name(module)} is not a Module subclass")
        if "_modules" not in self.__dict__:
            raise AttributeError("cannot assign module before Module.__init__() call")
        self._check_member_name(name, "module", self._modules)
        self._modules[name] = module

    # ------------------------------------------------------------------------ attributes
    def __getattr__(self, name: str) -> Any:
        # Only called when ordinary lookup fails: registered members live in the dicts below.
        # Look them up through __dict__ so a half-built object (mid-unpickling) cannot recurse.
        members = self.__dict__
        for registry in ("_parameters", "_buffers", "_modules"):
            if registry in members and name in members[registry]:
                return members[registry][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        def remove_from(*registries: dict[str, Any] | set[str]) -> None:
            for registry in registries:
                if name in registry:
                    if isinstance(registry, dict):
                        del registry[name]
                    else:
                        registry.discard(name)

        params = self.__dict__.get("_parameters")
        if isinstance(value, Parameter):
            if params is None:
                raise AttributeError("cannot assign parameters before Module.__init__() call")
            remove_from(self.__dict__, self._buffers, self._modules, self._non_persistent_buffers_set)
            self.register_parameter(name, value)
            return
        if params is not None and name in params:
            if value is not None:
                raise TypeError(
                    f"cannot assign '{_type_name(value)}' as parameter '{name}' "
                    f"(klflow.nn.Parameter or None expected)"
                )
            self.register_parameter(name, value)
            return
        modules = self.__dict__.get("_modules")
        if isinstance(value, Module):
            if modules is None:
                raise AttributeError("cannot assign module before Module.__init__() call")
            remove_from(self.__dict__, self._parameters, self._buffers, self._non_persistent_buffers_set)
            modules[name] = value
            return
        if modules is not None and name in modules:
            if value is not None:
                raise TypeError(
                    f"cannot assign '{_type_name(value)}' as child module '{name}' "
                    f"(klflow.nn.Module or None expected)"
                )
            modules[name] = value
            return
        buffers = self.__dict__.get("_buffers")
        if buffers is not None and name in buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(
                    f"cannot assign '{_type_name(value)}' as buffer '{name}' (klflow.Tensor or None expected)"
                )
            buffers[name] = value
            return
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name in self._parameters:
            del self._parameters[name]
        elif name in self._buffers:
            del self._buffers[name]
            self._non_persistent_buffers_set.discard(name)
        elif name in self._modules:
            del self._modules[name]
        else:
            super().__delattr__(name)

    def __dir__(self) -> list[str]:
        keys = itertools.chain(dir(type(self)), self.__dict__, self._parameters, self._modules, self._buffers)
        # Children of containers are named "0", "1", ...: not attribute names, so left out.
        return sorted({key for key in keys if not key[:1].isdigit()})

    # ------------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        # As in OneFlow, hooks (often closures or lambdas) are not serialized or copied.
        if self._forward_hooks or self._forward_pre_hooks:
            warnings.warn(
                f"the forward hooks of {type(self).__name__} are not kept when the module is "
                f"pickled or copied",
                stacklevel=2,
            )
        state = self.__dict__.copy()
        del state["_forward_hooks"]
        del state["_forward_pre_hooks"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__["_forward_hooks"] = OrderedDict()
        self.__dict__["_forward_pre_hooks"] = OrderedDict()
        self.__dict__.setdefault("_non_persistent_buffers_set", set())

    # ------------------------------------------------------------------------ iteration
    def _named_members(
        self,
        get_members_fn: Callable[[Module], Any],
        prefix: str = "",
        recurse: bool = True,
        remove_duplicate: bool = True,
    ) -> Iterator[tuple[str, Any]]:
        """Yield ``(qualified name, member)`` for the members ``get_members_fn`` lists on each
        module, skipping ``None`` slots and (by default) members already yielded."""
        seen: set[int] = set()  # ids: members are held by the modules while we iterate
        modules = (
            self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate)
            if recurse
            else [(prefix, self)]
        )
        for module_prefix, module in modules:
            for name, member in get_members_fn(module):
                if member is None:
                    continue
                if remove_duplicate:
                    if id(member) in seen:
                        continue
                    seen.add(id(member))
                yield (module_prefix + ("." if module_prefix else "") + name, member)

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Parameter]]:
        """Yield ``(name, parameter)``, names qualified by submodule (``"child.weight"``);
        a parameter shared by several modules is yielded once, under its first name.

        >>> import klflow as flow
        >>> outer = flow.nn.Module(); outer.inner = flow.nn.Module()
        >>> outer.inner.weight = flow.nn.Parameter(flow.tensor([1.0]))
        >>> [name for name, _ in outer.named_parameters()]
        ['inner.weight']
        """
        return self._named_members(
            lambda module: module._parameters.items(), prefix, recurse, remove_duplicate
        )

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        """Yield the parameters of this module (and, if ``recurse``, of all submodules)."""
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def named_buffers(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Tensor]]:
        """Yield ``(name, buffer)`` for every buffer, persistent or not (see
        :meth:`named_parameters` for the naming and deduplication)."""
        return self._named_members(lambda module: module._buffers.items(), prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        """Yield the buffers of this module (and, if ``recurse``, of all submodules)."""
        for _, buffer in self.named_buffers(recurse=recurse):
            yield buffer

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """Yield ``(name, child)`` for the immediate children (each module once)."""
        seen: set[int] = set()
        for name, module in self._modules.items():
            if module is not None and id(module) not in seen:
                seen.add(id(module))
                yield name, module

    def children(self) -> Iterator[Module]:
        """Yield the immediate child modules."""
        for _, module in self.named_children():
            yield module

    def named_modules(
        self, memo: set[Module] | None = None, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Module]]:
        """Yield ``(name, module)`` for this module (named ``prefix``) and every descendant,
        depth first, each module once (unless ``remove_duplicate=False``).

        >>> import klflow as flow
        >>> outer = flow.nn.Module(); outer.inner = flow.nn.Module()
        >>> outer.again = outer.inner
        >>> [name for name, _ in outer.named_modules()]
        ['', 'inner']
        """
        if memo is None:
            memo = set()
        if self in memo:
            return
        if remove_duplicate:
            memo.add(self)
        yield prefix, self
        for name, module in self._modules.items():
            if module is None:
                continue
            child_prefix = prefix + ("." if prefix else "") + name
            yield from module.named_modules(memo, child_prefix, remove_duplicate)

    def modules(self) -> Iterator[Module]:
        """Yield this module and every descendant, each once."""
        for _, module in self.named_modules():
            yield module

    def apply(self, fn: Callable[[Module], Any]) -> Self:
        """Call ``fn`` on every child (recursively, children first) and then on ``self``.

        >>> import klflow as flow
        >>> class Inner(flow.nn.Module):
        ...     pass
        >>> outer = flow.nn.Module(); outer.inner = Inner()
        >>> _ = outer.apply(lambda m: print(type(m).__name__))
        Inner
        Module
        """
        for module in self.children():
            module.apply(fn)
        fn(self)
        return self

    # ------------------------------------------------------------------------ modes & grads
    def train(self, mode: bool = True) -> Self:
        """Set training mode (``mode=True``) or evaluation mode on this module and all
        descendants; returns ``self``."""
        if not isinstance(mode, bool):
            raise ValueError(f"training mode is expected to be boolean, got {mode!r}")
        self.training = mode
        for module in self.children():
            module.train(mode)
        return self

    def eval(self) -> Self:
        """Set evaluation mode (the same as ``train(False)``); returns ``self``.

        >>> import klflow as flow
        >>> flow.nn.Module().eval().training
        False
        """
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Self:
        """Set ``requires_grad`` on every parameter (to freeze or unfreeze); returns ``self``."""
        for param in self.parameters():
            param.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Reset the gradients of all parameters.

        With ``set_to_none=False`` (OneFlow's default) each existing ``.grad`` is detached and
        filled with zeros, keeping its dtype, device and tensor object; with ``True`` it
        becomes ``None``.

        >>> import klflow as flow
        >>> module = flow.nn.Module()
        >>> module.weight = flow.nn.Parameter(flow.tensor([1.0, 2.0]))
        >>> module.weight.backward(flow.tensor([3.0, 4.0]))
        >>> module.zero_grad(); module.weight.grad.tolist()
        [0.0, 0.0]
        >>> module.zero_grad(set_to_none=True); module.weight.grad is None
        True
        """
        for param in self.parameters():
            grad = param.grad
            if grad is None:
                continue
            if set_to_none:
                param.grad = None
                continue
            if grad.grad_fn is not None:
                grad = grad.detach()
                param.grad = grad
            elif grad.requires_grad:
                grad.requires_grad_(False)
            _refill_with_zeros(grad)

    # ------------------------------------------------------------------------ conversion
    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Self:
        """Replace every parameter and buffer ``t`` (of the children too) by ``fn(t)``.

        Parameters stay the same :class:`Parameter` objects, taking the converted data (as
        OneFlow's ``param.data = fn(param)``), keep ``requires_grad``, and have their ``.grad``
        converted by ``fn`` as well. ``fn`` runs without recording a graph, and once per
        tensor even when several modules share it. Returns ``self``.
        """
        applied = _applied_tensors.get()
        token = _applied_tensors.set({}) if applied is None else None
        try:
            applied = _applied_tensors.get()
            assert applied is not None
            if recurse:
                for module in self.children():
                    module._apply(fn)
            for key, param in self._parameters.items():
                if param is not None:
                    self._parameters[key] = _apply_to_parameter(param, fn, applied)
            for key, buffer in self._buffers.items():
                if buffer is not None:
                    self._buffers[key] = _apply_to_buffer(buffer, fn, applied)
        finally:
            if token is not None:
                _applied_tensors.reset(token)
        return self

    def to(self, *args: Any, **kwargs: Any) -> Self:
        """Move and/or cast the parameters and buffers, in place; returns ``self``.

        Called as ``to(device)``, ``to(dtype)``, ``to(device, dtype)``, ``to(tensor)`` (that
        tensor's dtype and device) or with ``device=``/``dtype=``/``tensor=`` keywords, like
        :meth:`klflow.Tensor.to`; a device may also be a CUDA index. Only floating-point
        tensors change dtype (all of klflow's do).

        >>> import klflow as flow
        >>> module = flow.nn.Module()
        >>> module.weight = flow.nn.Parameter(flow.tensor([1.0]))
        >>> module.to(flow.float64).weight.dtype
        klflow.float64
        """
        target_dtype, target_device = _parse_module_to_args(args, kwargs)

        def convert(t: Tensor) -> Tensor:
            options: dict[str, Any] = {}
            if target_device is not None:
                options["device"] = target_device
            if target_dtype is not None and t.dtype.is_floating_point:
                options["dtype"] = target_dtype
            return t.to(**options) if options else t

        return self._apply(convert)

    def cpu(self) -> Self:
        """Move all parameters and buffers to the host; returns ``self``."""
        return self._apply(lambda t: t.cpu())

    def cuda(self, device: int | str | Device | None = None) -> Self:
        """Move all parameters and buffers to a CUDA device (the current one by default);
        returns ``self``. Raises what :meth:`klflow.Tensor.cuda` raises where CUDA is absent."""
        return self._apply(lambda t: t.cuda(device))

    def half(self) -> Self:
        """Cast floating-point parameters and buffers to float16; returns ``self``."""
        return self._apply(lambda t: t.half() if t.dtype.is_floating_point else t)

    def bfloat16(self) -> Self:
        """Cast floating-point parameters and buffers to bfloat16; returns ``self``."""
        return self._apply(lambda t: t.bfloat16() if t.dtype.is_floating_point else t)

    def float(self) -> Self:
        """Cast floating-point parameters and buffers to float32; returns ``self``."""
        return self._apply(lambda t: t.float() if t.dtype.is_floating_point else t)

    def double(self) -> Self:
        """Cast floating-point parameters and buffers to float64; returns ``self``.

        >>> import klflow as flow
        >>> module = flow.nn.Module()
        >>> module.register_buffer("total", flow.tensor([0.0]))
        >>> module.double().total.dtype
        klflow.float64
        """
        return self._apply(lambda t: t.double() if t.dtype.is_floating_point else t)

    def to_global(self, placement: Any = None, sbp: Any = None) -> Self:
        """Turn every parameter and buffer into a global tensor with ``placement`` and ``sbp``
        (or redistribute global ones) via :meth:`klflow.Tensor.to_global`; parameters remain
        :class:`Parameter` objects. Collective: every rank of the placement must call it.
        Returns ``self``."""
        return self._apply(lambda t: t.to_global(placement=placement, sbp=sbp))

    def to_local(self) -> Self:
        """Replace every global parameter and buffer by this rank's local component; returns
        ``self``."""
        return self._apply(lambda t: t.to_local())

    def to_consistent(self, *args: Any, **kwargs: Any) -> Self:
        """Removed from OneFlow (global tensors were once called consistent): always raises."""
        raise RuntimeError("Module.to_consistent() is no longer available; use Module.to_global() instead")

    # ------------------------------------------------------------------------ state dict
    def _save_to_state_dict(self, destination: dict[str, Tensor], prefix: str, keep_vars: bool) -> None:
        """Put this module's own parameters and persistent buffers (not its children's) into
        ``destination`` under ``prefix + name``, detached unless ``keep_vars``."""
        for name, param in self._parameters.items():
            if param is not None:
                destination[prefix + name] = param if keep_vars else param.detach()
        for name, buffer in self._buffers.items():
            if buffer is not None and name not in self._non_persistent_buffers_set:
                destination[prefix + name] = buffer if keep_vars else buffer.detach()

    def state_dict(
        self,
        destination: dict[str, Tensor] | None = None,
        prefix: str = "",
        keep_vars: bool = False,
    ) -> OrderedDict[str, Tensor]:
        """An ``OrderedDict`` of every parameter and persistent buffer, by qualified name.

        Each module's parameters come first, then its buffers, then its children's entries.
        Values share memory with the module's tensors but are detached from autograd unless
        ``keep_vars=True``. ``None`` slots and non-persistent buffers are left out.

        >>> import klflow as flow
        >>> outer = flow.nn.Module(); outer.inner = flow.nn.Module()
        >>> outer.inner.weight = flow.nn.Parameter(flow.tensor([1.0]))
        >>> outer.state_dict()
        OrderedDict([('inner.weight', tensor([1.], dtype=klflow.float32))])
        """
        if destination is None:
            destination = OrderedDict()
            destination._metadata = OrderedDict()  # type: ignore[attr-defined]
        metadata = getattr(destination, "_metadata", None)
        if metadata is not None:
            metadata[prefix[:-1]] = {"version": self._version}
        self._save_to_state_dict(destination, prefix, keep_vars)
        for name, module in self._modules.items():
            if module is not None:
                module.state_dict(destination, prefix + name + ".", keep_vars=keep_vars)
        return destination  # type: ignore[return-value]

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Copy this module's own entries of ``state_dict`` (keys ``prefix + name``) into its
        parameters and persistent buffers, in place, collecting problems in the lists.

        With ``strict``, keys under ``prefix`` naming nothing here (and no child) go to
        ``unexpected_keys``; entries this module expects but does not find always go to
        ``missing_keys``.
        """
        persistent_buffers = {
            name: buffer
            for name, buffer in self._buffers.items()
            if name not in self._non_persistent_buffers_set
        }
        local_state = {
            name: value
            for name, value in itertools.chain(self._parameters.items(), persistent_buffers.items())
            if value is not None
        }
        for name, target in local_state.items():
            key = prefix + name
            if key not in state_dict:
                missing_keys.append(key)
                continue
            problem = _copy_into(target, state_dict[key], key)
            if problem is not None:
                error_msgs.append(problem)
        if strict:
            for key in state_dict:
                if not key.startswith(prefix):
                    continue
                head, dot, _ = key[len(prefix) :].partition(".")
                # "child.x" belongs to a child module, "name" to this module's own state.
                if (dot and head not in self._modules) or (not dot and head not in local_state):
                    unexpected_keys.append(key)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> _IncompatibleKeys:
        """Copy parameters and persistent buffers from ``state_dict`` into this module and its
        descendants, in place (values are cast to each tensor's dtype; shapes must match).

        Returns the named tuple ``(missing_keys, unexpected_keys)``. With ``strict=True`` (the
        default) any missing or unexpected key raises a ``RuntimeError`` listing them; shape
        mismatches and failed copies raise whatever ``strict`` is.

        >>> import klflow as flow
        >>> module = flow.nn.Module()
        >>> module.weight = flow.nn.Parameter(flow.tensor([1.0]))
        >>> module.load_state_dict({"weight": flow.tensor([5.0])})
        <All keys matched successfully>
        >>> module.weight.tolist()
        [5.0]
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"Expected state_dict to be dict-like, got {_type_name(state_dict)}.")
        missing_keys: list[str] = []
        unexpected_keys: list[str] = []
        error_msgs: list[str] = []
        metadata = getattr(state_dict, "_metadata", None)

        def load(module: Module, prefix: str) -> None:
            local_metadata = {} if metadata is None else metadata.get(prefix[:-1], {})
            # Keys are always checked (strict=True here) so the result reports them even when
            # the caller's strict=False only silences the error.
            module._load_from_state_dict(
                state_dict,
                prefix,
                local_metadata,
                True,
                missing_keys,
                unexpected_keys,
                error_msgs,
            )
            for name, child in module._modules.items():
                if child is not None:
                    load(child, prefix + name + ".")

        load(self, "")
        if strict:
            if unexpected_keys:
                listed = ", ".join(f'"{key}"' for key in unexpected_keys)
                error_msgs.insert(0, f"Unexpected key(s) in state_dict: {listed}. ")
            if missing_keys:
                listed = ", ".join(f'"{key}"' for key in missing_keys)
                error_msgs.insert(0, f"Missing key(s) in state_dict: {listed}. ")
        if error_msgs:
            raise RuntimeError(
                f"Error(s) in loading state_dict for {type(self).__name__}:\n\t" + "\n\t".join(error_msgs)
            )
        return _IncompatibleKeys(missing_keys, unexpected_keys)

    # ------------------------------------------------------------------------ printing
    def _get_name(self) -> str:
        """The name printed at the start of the repr: the class name."""
        return type(self).__name__

    def extra_repr(self) -> str:
        """Module-specific text printed inside the parentheses of the repr (one line or
        several); empty by default. Subclasses with settings override it."""
        return ""

    def __repr__(self) -> str:
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [f"({name}): " + _addindent(repr(module), 2) for name, module in self._modules.items()]
        lines = extra_lines + child_lines
        text = self._get_name() + "("
        if lines:
            # A one-line extra_repr with no children stays on the same line.
            if len(extra_lines) == 1 and not child_lines:
                text += extra_lines[0]
            else:
                text += "\n  " + "\n  ".join(lines) + "\n"
        return text + ")"

    def _shallow_repr(self) -> str:
        """The repr without the children: the name and the ``extra_repr`` only."""
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        text = self._get_name() + "("
        if len(extra_lines) == 1:
            text += extra_lines[0]
        elif extra_lines:
            text += "\n  " + "\n  ".join(extra_lines) + "\n"
        return text + ")"


# ---------------------------------------------------------------------------- helpers
def _apply_to_parameter(
    param: Parameter, fn: Callable[[Tensor], Tensor], applied: dict[int, tuple[Tensor, Tensor]]
) -> Parameter:
    if id(param) in applied:
        return applied[id(param)][1]  # type: ignore[return-value]
    with graph.no_grad():
        converted = fn(param)
    if converted is not param:
        if isinstance(param, Parameter):
            param._assign_data(converted)
            result = param
        else:  # a non-Parameter slipped into _parameters through the dict: make it one
            result = Parameter(converted, requires_grad=param.requires_grad)
    else:
        result = param
    if param.grad is not None:
        grad = param.grad
        with graph.no_grad():
            grad_converted = fn(grad)
        if grad_converted is not grad:
            grad_converted.requires_grad = grad.requires_grad
            result.grad = grad_converted
    _remember(applied, param, result)
    return result


def _apply_to_buffer(
    buffer: Tensor, fn: Callable[[Tensor], Tensor], applied: dict[int, tuple[Tensor, Tensor]]
) -> Tensor:
    if id(buffer) in applied:
        return applied[id(buffer)][1]
    with graph.no_grad():
        converted = fn(buffer)
    _remember(applied, buffer, converted)
    return converted


def _remember(applied: dict[int, tuple[Tensor, Tensor]], original: Tensor, converted: Tensor) -> None:
    # The converted tensor is recorded as done too: a module reached twice (shared by two
    # parents) holds it by then, and must not convert it a second time.
    applied[id(original)] = (original, converted)
    applied[id(converted)] = (converted, converted)


def _parse_module_to_args(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[dtypes.dtype | None, Device | None]:
    """The ``(dtype, device)`` that ``Module.to(*args, **kwargs)`` asks for (``None``: keep)."""
    kwargs = dict(kwargs)
    target_dtype = kwargs.pop("dtype", None)
    target_device = kwargs.pop("device", None)
    like = kwargs.pop("tensor", None)
    kwargs.pop("non_blocking", None)  # accepted for compatibility; copies are synchronous
    if kwargs:
        raise TypeError(f"to() got unexpected keyword arguments {sorted(kwargs)}")
    if len(args) > 2:
        raise TypeError(f"to() takes at most 2 positional arguments ({len(args)} given)")
    if like is not None:
        args = (*args, like)
    for arg in args:
        if isinstance(arg, Tensor):
            target_dtype, target_device = arg.dtype, arg.device
        elif isinstance(arg, dtypes.dtype):
            target_dtype = arg
        elif isinstance(arg, (str, Device, int)) and not isinstance(arg, bool):
            target_device = arg
        else:
            raise TypeError(f"to() expects a device, a dtype or a tensor; got {_type_name(arg)} {arg!r}")
    if target_dtype is not None:
        try:
            target_dtype = dtypes.resolve(target_dtype)
        except TypeError:
            raise TypeError(
                f"nn.Module.to only accepts floating point dtypes, but got desired dtype={target_dtype!r}"
            ) from None
    if isinstance(target_device, int) and not isinstance(target_device, bool):
        target_device = Device("cuda", target_device)
    elif target_device is not None:
        target_device = Device(target_device)
    return target_dtype, target_device


def _refill_with_zeros(grad: Tensor) -> None:
    """Make ``grad`` hold zeros, keeping the tensor object (so references to it see zeros).

    A gradient's memory may be shared with a tensor passed to ``backward`` or be a read-only
    broadcast view, so fresh zeros are put in rather than writing into that memory. Zero
    local components are the zero global tensor under any SBP.
    """
    grad._data = conversion.full(grad._data.shape, 0.0, grad.dtype, grad.device)


def _copy_into(target: Tensor, value: Any, key: str) -> str | None:
    """Copy ``value`` (a tensor or array-like) into ``target`` in place, cast to its dtype.

    Returns the error message for ``load_state_dict`` when the copy is impossible, else None.
    """
    if isinstance(value, Tensor):
        value_shape = tuple(value.shape)
        value_is_global = value.is_global
    else:
        try:
            host_value = np.asarray(value)
        except Exception:  # noqa: BLE001 - any failure means "not array-like"
            host_value = np.asarray(None, dtype=object)
        if host_value.dtype == object or host_value.dtype.kind not in "fiub":
            return (
                f'While copying the parameter named "{key}", expected klflow.Tensor or an '
                f"array-like of numbers from checkpoint but received {_type_name(value)}"
            )
        value_shape = host_value.shape
        value_is_global = False
    if value_shape != tuple(target.shape):
        return (
            f"size mismatch for {key}: copying a param with shape {list(value_shape)} from "
            f"checkpoint, the shape in current model is {list(target.shape)}."
        )
    if value_is_global != target.is_global:
        hint = (
            "Maybe you need to convert the checkpoint param to global."
            if target.is_global
            else "Maybe you need to convert your model to global."
        )
        return (
            f'local / global mismatch for "{key}": param from checkpoint is '
            f"{'global' if value_is_global else 'local'} tensor, but the param in current "
            f"model is {'global' if target.is_global else 'local'} tensor. {hint}"
        )
    try:
        with graph.no_grad():
            if isinstance(value, Tensor):
                if target.is_global:
                    # Lay the value out as the target is laid out, then copy local components.
                    value = value.to_global(placement=target.placement, sbp=target.sbp)
                    value = value.to_local()
                host_value = np.asarray(value.numpy()) if target.device.type == "cpu" else None
            if target.device.type == "cpu":
                np.copyto(target._data, host_value, casting="unsafe")
            else:
                # Device memory is refilled through a fresh copy on the target's device.
                target._data = tensor(value, dtype=target.dtype, device=target.device)._data
    except Exception as err:  # noqa: BLE001 - reported per key, as OneFlow and PyTorch do
        return f'While copying the parameter named "{key}", an exception occurred: {err!r}.'
    return None
