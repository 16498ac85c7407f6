"""klflow: OneFlow's ``nn.KLDivLoss`` on numba kernels, with OneFlow's global tensors over MPI.

>>> import klflow as flow
>>> loss = flow.nn.KLDivLoss(reduction="batchmean")
>>> loss(flow.tensor([[-1.0, -0.5]]), flow.tensor([[0.25, 0.75]]))
tensor(0.0627, dtype=klflow.float32)
"""

from klflow import autograd, cuda, env, nn, sbp
from klflow.autograd import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from klflow.device import device
from klflow.distributed.placement import placement
from klflow.dtypes import bool, double, dtype, float, float16, float32, float64, half
from klflow.functions import exp, log, mean, sum
from klflow.printing import get_printoptions, set_printoptions
from klflow.tensor import Size, Tensor, from_numpy, tensor

env.configure_threads()  # ranks × threads ≤ cores on this node, unless NUMBA_NUM_THREADS is set

__version__ = "0.1.0"

__all__ = [
    "Size",
    "autograd",
    "bool",
    "cuda",
    "Tensor",
    "device",
    "double",
    "dtype",
    "enable_grad",
    "env",
    "exp",
    "float",
    "float16",
    "float32",
    "float64",
    "from_numpy",
    "get_printoptions",
    "half",
    "is_grad_enabled",
    "log",
    "mean",
    "nn",
    "no_grad",
    "placement",
    "sbp",
    "set_grad_enabled",
    "set_printoptions",
    "sum",
    "tensor",
]
