"""sigattn for PyTorch: sigmoid attention on CUDA tensors with autograd, running sigattn's
generated kernels through its C ABI (ctypes over libsigattn.so), on torch's current device and
stream. A drop-in for TritonSigmoid: `import sigattn as triton_sigmoid` keeps its calls working.

With torch >= 2.4 the op is the torch.library custom op sigattn::forward (backward:
sigattn::backward), which torch.compile(fullgraph=True) traces without graph breaks and CUDA
graphs capture; with older torch it is an autograd.Function for eager use.
"""

from ._library import SigattnError, library_path, version
from ._ops import REGISTERED_AS_TORCH_OP
from .attention import sigmoid_attention, sigmoid_attention_padded, sigmoid_attention_varlen
from .tuning import find_executable, set_database_path, set_online_tuning, tune

__all__ = [
    "REGISTERED_AS_TORCH_OP",
    "SigattnError",
    "find_executable",
    "library_path",
    "set_database_path",
    "set_online_tuning",
    "sigmoid_attention",
    "sigmoid_attention_padded",
    "sigmoid_attention_varlen",
    "tune",
    "version",
]
