"""The text of a tensor's ``repr``/``str``, laid out exactly as OneFlow lays it out.

OneFlow prints tensors with the rules of PyTorch's tensor printer plus a few
differences of its own: the dtype suffix is always present, global tensors show
``placement=`` and ``sbp=``, the default line width follows the terminal, and
zero is the only value left out when choosing between fixed and scientific
notation (infinities and NaN take part in that choice).

Example:
    >>> import numpy as np
    >>> from klflow.printing import tensor_repr
    >>> values = np.array([1.3514, 0.0, -0.0836], np.float32)
    >>> print(tensor_repr(values, dtype_name="klflow.float32"))
    tensor([ 1.3514,  0.0000, -0.0836], dtype=klflow.float32)
    >>> print(tensor_repr(np.float32(0.4226), dtype_name="klflow.float32",
    ...                   requires_grad=True))
    tensor(0.4226, dtype=klflow.float32, requires_grad=True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["tensor_repr", "set_printoptions", "get_printoptions", "printoptions"]

_FALLBACK_LINEWIDTH = 80
_PREFIX = "tensor("


@dataclasses.dataclass
class _PrintOptions:
    precision: int = 4
    threshold: float = 1000
    edgeitems: int = 3
    # None means "as wide as the terminal" (80 when there is none), which is
    # OneFlow's default until a linewidth or a profile is set explicitly.
    linewidth: int | None = None
    sci_mode: bool | None = None


_OPTIONS = _PrintOptions()

_PROFILES: dict[str, dict[str, Any]] = {
    "default": {"precision": 4, "threshold": 1000, "edgeitems": 3, "linewidth": 80},
    "short": {"precision": 2, "threshold": 1000, "edgeitems": 2, "linewidth": 80},
    "full": {"precision": 4, "threshold": math.inf, "edgeitems": 3, "linewidth": 80},
}


def _current_linewidth() -> int:
    if _OPTIONS.linewidth is not None:
        return _OPTIONS.linewidth
    try:
        columns = os.get_terminal_size().columns
    except OSError:  # stdout is not a terminal (pipes, files, test capture)
        return _FALLBACK_LINEWIDTH
    # Some pseudo-terminals report 0 columns; treat that like having none.
    return columns if columns > 0 else _FALLBACK_LINEWIDTH


def set_printoptions(
    precision: int | None = None,
    threshold: float | None = None,
    edgeitems: int | None = None,
    linewidth: int | None = None,
    profile: str | None = None,
    sci_mode: bool | None = None,
) -> None:
    """Set the options used to print tensors (the semantics of OneFlow and PyTorch).

    Args:
        precision: digits after the decimal point (default 4).
        threshold: element count above which a tensor is summarised (default 1000).
        edgeitems: items shown at each end of a summarised dimension (default 3).
        linewidth: characters per line; until this or ``profile`` is given the
            width follows the terminal (80 when stdout is not a terminal).
        profile: ``"default"``, ``"short"`` or ``"full"``; applied first, then
            overridden by any other argument given.
        sci_mode: True or False forces scientific notation on or off; None
            (also what every call that omits it sets) chooses automatically.
    """
    if profile is not None:
        if profile not in _PROFILES:
            # OneFlow ignores an unknown profile and then fails on the next
            # print because no line width is left; failing here is clearer.
            raise ValueError(f"unknown print profile {profile!r}; expected one of {sorted(_PROFILES)}")
        for name, value in _PROFILES[profile].items():
            setattr(_OPTIONS, name, value)
    if precision is not None:
        _OPTIONS.precision = precision
    if threshold is not None:
        _OPTIONS.threshold = threshold
    if edgeitems is not None:
        _OPTIONS.edgeitems = edgeitems
    if linewidth is not None:
        _OPTIONS.linewidth = linewidth
    # Like OneFlow and PyTorch: every call resets sci_mode, even when omitted.
    _OPTIONS.sci_mode = sci_mode


def get_printoptions() -> dict[str, Any]:
    """Return the current print options as a dict (the line width in effect now)."""
    options = dataclasses.asdict(_OPTIONS)
    options["linewidth"] = _current_linewidth()
    return options


@contextlib.contextmanager
def printoptions(**kwargs: Any) -> Iterator[None]:
    """Apply ``set_printoptions(**kwargs)`` inside a ``with`` block, then restore.

    The previous state comes back exactly, including a line width that was
    following the terminal.
    """
    saved = dataclasses.replace(_OPTIONS)
    try:
        set_printoptions(**kwargs)
        yield
    finally:
        for field in dataclasses.fields(_PrintOptions):
            setattr(_OPTIONS, field.name, getattr(saved, field.name))


class _ElementFormatter:
    """Chooses one notation and one width for every element that is shown."""

    def __init__(self, shown: np.ndarray) -> None:
        self.floating = shown.dtype.kind == "f"
        self.int_mode = True
        self.sci_mode = False
        self.width = 1
        precision = _OPTIONS.precision
        flat = shown.reshape(-1)

        if not self.floating:
            for value in flat.tolist():
                self.width = max(self.width, len(str(value)))
        else:
            # Only zeros are set aside: unlike PyTorch, OneFlow keeps inf and
            # nan here, so an inf forces scientific notation on its neighbours.
            nonzero: list[float] = flat[flat != 0].tolist()
            if not nonzero:
                return  # all zeros: "0." style, and sci_mode is not applied
            magnitudes = np.abs(np.array(nonzero, dtype=np.float64))
            # np.min/np.max propagate NaN, which then fails every test below.
            smallest = float(magnitudes.min())
            largest = float(magnitudes.max())
            self.int_mode = bool(np.all(magnitudes == np.ceil(magnitudes)))

            wide_range = largest / smallest > 1000.0 or largest > 1.0e8
            if not self.int_mode:
                wide_range = wide_range or smallest < 1.0e-4
            if wide_range:
                self.sci_mode = True
                texts = [f"{value:.{precision}e}" for value in nonzero]
            elif self.int_mode:
                # One extra column for the trailing "." of "1.".
                texts = [f"{value:.0f}." for value in nonzero]
            else:
                texts = [f"{value:.{precision}f}" for value in nonzero]
            self.width = max(self.width, *(len(text) for text in texts))

        # Applied after the widths are measured, as OneFlow does: a forced
        # notation keeps the width of the notation chosen automatically.
        if _OPTIONS.sci_mode is not None:
            self.sci_mode = _OPTIONS.sci_mode

    def format(self, value: float | int | bool) -> str:
        precision = _OPTIONS.precision
        if not self.floating:
            text = str(value)
        elif self.sci_mode:
            text = f"{value:{self.width}.{precision}e}"
        elif self.int_mode:
            text = f"{value:.0f}"
            if math.isfinite(value):
                text += "."
        else:
            text = f"{value:.{precision}f}"
        return text.rjust(self.width)


def _summarized(values: np.ndarray, edgeitems: int) -> np.ndarray:
    """Keep only the leading and trailing ``edgeitems`` of every long dimension."""
    for axis, size in enumerate(values.shape):
        if size > 2 * edgeitems:
            kept = list(range(edgeitems)) + list(range(size - edgeitems, size))
            values = np.take(values, kept, axis=axis)
    return values


def _vector_text(values: np.ndarray, indent: int, summarize: bool, formatter: _ElementFormatter) -> str:
    edgeitems = _OPTIONS.edgeitems
    # Each element takes its width plus ", " between neighbours.
    per_line = max(1, math.floor((_current_linewidth() - indent) / (formatter.width + 2)))
    if summarize and values.shape[0] > 2 * edgeitems:
        items = (
            [formatter.format(value) for value in values[:edgeitems].tolist()]
            + [" ..."]
            + [formatter.format(value) for value in values[-edgeitems:].tolist()]
        )
    else:
        items = [formatter.format(value) for value in values.tolist()]
    lines = [", ".join(items[start : start + per_line]) for start in range(0, len(items), per_line)]
    return "[" + (",\n" + " " * (indent + 1)).join(lines) + "]"


def _nested_text(values: np.ndarray, indent: int, summarize: bool, formatter: _ElementFormatter) -> str:
    if values.ndim == 0:
        return formatter.format(values.item())
    if values.ndim == 1:
        return _vector_text(values, indent, summarize, formatter)
    edgeitems = _OPTIONS.edgeitems
    rows = values.shape[0]
    if summarize and rows > 2 * edgeitems:
        parts = (
            [_nested_text(values[i], indent + 1, summarize, formatter) for i in range(edgeitems)]
            + ["..."]
            + [
                _nested_text(values[i], indent + 1, summarize, formatter)
                for i in range(rows - edgeitems, rows)
            ]
        )
    else:
        parts = [_nested_text(values[i], indent + 1, summarize, formatter) for i in range(rows)]
    # Sub-blocks of a 3-D or deeper tensor are separated by blank lines.
    separator = "," + "\n" * (values.ndim - 1) + " " * (indent + 1)
    return "[" + separator.join(parts) + "]"


def _values_text(values: np.ndarray, indent: int) -> str:
    summarize = values.size > _OPTIONS.threshold
    if values.dtype == np.float16 or values.dtype.name == "bfloat16":
        # OneFlow widens half and bfloat16 tensors to float32 before printing them.
        values = values.astype(np.float32)
    shown = _summarized(values, _OPTIONS.edgeitems) if summarize else values
    return _nested_text(values, indent, summarize, _ElementFormatter(shown))


def _join_suffixes(text: str, suffixes: list[str], indent: int) -> str:
    linewidth = _current_linewidth()
    parts = [text]
    # OneFlow's own measure of the last line (two more than its length); kept
    # as is because it decides where the suffixes wrap.
    last_line_len = len(text) - text.rfind("\n") + 1
    for suffix in suffixes:
        if last_line_len + len(suffix) + 2 > linewidth:
            parts.append(",\n" + " " * indent + suffix)
            last_line_len = indent + len(suffix)
        else:
            parts.append(", " + suffix)
            last_line_len += len(suffix) + 2
    parts.append(")")
    return "".join(parts)


def tensor_repr(
    values: np.ndarray,
    *,
    dtype_name: str,
    device: str | None = None,
    placement: str | None = None,
    sbp: str | None = None,
    requires_grad: bool = False,
    grad_fn: str | None = None,
) -> str:
    """Return the text OneFlow prints for a tensor, with the given names in it.

    Args:
        values: the tensor's (logical) value, any shape, 0-d and empty included.
        dtype_name: printed after ``dtype=``, e.g. ``"klflow.float32"``.
        device: the device of a local tensor, e.g. ``"cuda:0"``; None or a CPU
            device prints nothing.  Ignored for a global tensor.
        placement: the placement's repr, for a global tensor (with ``sbp``).
        sbp: the sbp tuple's repr, for a global tensor (with ``placement``).
        requires_grad: print ``requires_grad=True``; only a leaf shows it, so it
            is left out when ``grad_fn`` is given.
        grad_fn: name of the function that produced the tensor, printed as
            ``grad_fn=<NAME>``.

    Suffixes come in OneFlow's order: placement and sbp (or device), size (for
    empty tensors that are not 1-D), dtype, then grad_fn or requires_grad.
    """
    if (placement is None) != (sbp is None):
        raise ValueError("a global tensor needs both placement and sbp")
    values = np.asarray(values)
    indent = len(_PREFIX)
    suffixes: list[str] = []

    if placement is not None:
        suffixes.append(f"placement={placement}")
        suffixes.append(f"sbp={sbp}")
    elif device is not None and device.split(":", 1)[0] != "cpu":
        suffixes.append(f"device='{device}'")

    if values.size == 0:
        # Like NumPy, only a 1-D empty tensor leaves its shape implicit.
        if values.ndim != 1:
            suffixes.append(f"size={tuple(values.shape)}")
        body = "[]"
    else:
        body = _values_text(values, indent)

    suffixes.append(f"dtype={dtype_name}")
    if grad_fn is not None:
        suffixes.append(f"grad_fn=<{grad_fn}>")
    elif requires_grad:
        suffixes.append("requires_grad=True")

    return _join_suffixes(_PREFIX + body, suffixes, indent)
