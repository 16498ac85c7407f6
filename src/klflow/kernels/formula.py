"""The KL-divergence formulas: one plain scalar function each, compiled for the CPU and for CUDA.

These functions hold the only copy of the loss's math. The CPU kernels compile them with
``numba.njit`` and the CUDA kernels with ``numba.cuda.jit(device=True)``, so the two cannot drift.
The transcendental part (``log y`` or ``exp y``) is computed by the caller with the target's own
fast routine and passed in, because the CPU and CUDA targets need different implementations.

OneFlow's element (which klflow follows, see ``docs/semantics.md``):

* ``log_target=False``: ``y > 0 ? y * (log(y) - x) : 0`` — a target that is 0, negative or NaN
  contributes exactly 0, whatever ``x`` is.
* ``log_target=True``: ``exp(y) * (y - x)``.

>>> kl_term(0.5, 0.25, -1.3862943611198906)
-0.47157359027997264
"""


def kl_term(x, y, log_y):
    """One element of the loss for a probability target; ``log_y`` is ``log(y)``."""
    return y * (log_y - x) if y > 0 else 0.0


def kl_term_log_target(x, y, exp_y):
    """One element of the loss for a log-probability target; ``exp_y`` is ``exp(y)``."""
    return exp_y * (y - x)


def input_grad(y):
    """d element / d x for a probability target: ``-y`` where ``y > 0``, else 0."""
    return -y if y > 0 else 0.0


def input_grad_log_target(exp_y):
    """d element / d x for a log-probability target: ``-exp(y)``."""
    return -exp_y


def target_grad(x, log_y):
    """d element / d y for a probability target: ``log(y) + 1 - x`` (not masked, as in OneFlow)."""
    return log_y + 1.0 - x


def target_grad_log_target(x, y, exp_y):
    """d element / d y for a log-probability target: ``exp(y) * (y - x + 1)``."""
    return exp_y * (y - x + 1.0)
