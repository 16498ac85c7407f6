"""Dispatch: from validated tensors to the kernels of their device, with autograd recording."""
