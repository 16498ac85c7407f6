"""Dispatch, the one layer between the API and the kernels, for local and global tensors alike:
:mod:`kl_div` (the loss: backend, reduction, partial sums, backward), :mod:`global_tensors`
(``to_global``/``to_local``, internal boxing, materialising, gradients of layouts),
:mod:`backend` (the interface both devices' kernels satisfy) and :mod:`reduction` (divisors and
OneFlow's names)."""
