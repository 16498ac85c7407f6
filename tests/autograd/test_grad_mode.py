"""Grad-mode switches as PyTorch has them: set_grad_enabled as a call, a context manager and a
decorator; no_grad / enable_grad with and without parentheses."""

from __future__ import annotations

import klflow as flow


def _records() -> bool:
    x = flow.tensor([1.0], requires_grad=True)
    return (x * 2).requires_grad


def test_set_grad_enabled_as_a_plain_call():
    try:
        flow.set_grad_enabled(False)
        assert not flow.is_grad_enabled() and not _records()
    finally:
        flow.set_grad_enabled(True)
    assert flow.is_grad_enabled() and _records()


def test_set_grad_enabled_as_context_manager_and_decorator():
    with flow.set_grad_enabled(False):
        assert not _records()
    assert _records()

    @flow.set_grad_enabled(False)
    def inside() -> bool:
        return _records()

    assert flow.is_grad_enabled()  # decorating does not switch the mode
    assert not inside() and flow.is_grad_enabled()


def test_no_grad_with_and_without_parentheses():
    @flow.no_grad
    def bare() -> bool:
        return _records()

    @flow.no_grad()
    def called() -> bool:
        return _records()

    assert not bare() and not called() and flow.is_grad_enabled()
    assert bare.__name__ == "bare"
    with flow.no_grad():
        assert not _records()
        with flow.enable_grad():
            assert _records()
        assert not _records()

    @flow.enable_grad
    def forced() -> bool:
        return _records()

    with flow.no_grad():
        assert forced()


def test_modes_restore_after_an_exception():
    try:
        with flow.no_grad():
            raise KeyError
    except KeyError:
        pass
    assert flow.is_grad_enabled()
