"""klflow: OneFlow's ``nn.KLDivLoss`` on numba kernels, with OneFlow's global tensors over MPI.

>>> import klflow as flow
>>> loss = flow.nn.KLDivLoss(reduction="batchmean")
>>> loss(flow.tensor([[-1.0, -0.5]]), flow.tensor([[0.25, 0.75]]))
tensor(0.0627, dtype=klflow.float32)
"""

from klflow import autograd, cuda, env, nn, sbp, utils
from klflow.autograd import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from klflow.creation import (
    full,
    full_like,
    ones,
    ones_like,
    rand,
    rand_like,
    randn,
    randn_like,
    zeros,
    zeros_like,
)
from klflow.device import device
from klflow.distributed.placement import placement
from klflow.dtypes import bool, double, dtype, float, float16, float32, float64, half
from klflow.functions import exp, log, mean, sum
from klflow.nn.functional import log_softmax, softmax
from klflow.printing import get_printoptions, set_printoptions
from klflow.random import Generator, default_generator, initial_seed, manual_seed, seed
from klflow.tensor import Size, Tensor, from_numpy, tensor
from klflow.utils.dlpack import from_dlpack

env.configure_threads()  # ranks × threads ≤ cores on this node, unless NUMBA_NUM_THREADS is set

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    if name == "bfloat16":  # made on first use: it loads ml_dtypes (see klflow.dtypes)
        from klflow import dtypes

        return dtypes.bfloat16
    raise AttributeError(f"module 'klflow' has no attribute {name!r}")


__all__ = [
    "Generator",
    "Size",
    "autograd",
    "bfloat16",
    "bool",
    "cuda",
    "Tensor",
    "default_generator",
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
    "from_dlpack",
    "from_numpy",
    "full",
    "full_like",
    "get_printoptions",
    "half",
    "initial_seed",
    "is_grad_enabled",
    "log_softmax",
    "log",
    "manual_seed",
    "mean",
    "nn",
    "no_grad",
    "ones",
    "ones_like",
    "placement",
    "rand",
    "rand_like",
    "randn",
    "randn_like",
    "sbp",
    "seed",
    "set_grad_enabled",
    "set_printoptions",
    "softmax",
    "sum",
    "tensor",
    "utils",
    "zeros",
    "zeros_like",
]
