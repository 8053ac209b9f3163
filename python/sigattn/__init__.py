"""sigattn for PyTorch: sigmoid attention on CUDA tensors with autograd, running sigattn's
generated kernels through its C ABI (ctypes over libsigattn.so), on torch's current device and
stream. A drop-in for TritonSigmoid: `import sigattn as triton_sigmoid` keeps its calls working.

Eager calls reach the C ABI directly (through a torch.autograd.Function when an input requires
grad). With torch >= 2.4, traced calls are the torch.library custom op sigattn::forward
(backward: sigattn::backward), which torch.compile(fullgraph=True) traces without graph breaks;
CUDA graphs capture both. sigattn.integrations.transformers plugs it into Hugging Face models.
sigmoid_attention_with_kvcache serves inference: decode steps against a contiguous or paged KV
cache.
"""

from ._library import SigattnError, library_path, version
from ._ops import REGISTERED_AS_TORCH_OP
from .attention import sigmoid_attention, sigmoid_attention_padded, sigmoid_attention_varlen
from .diagnostics import explain, explain_with_kvcache, get_log_level, set_log_level
from .kvcache import sigmoid_attention_with_kvcache
from .tuning import find_executable, set_database_path, set_online_tuning, tune

__all__ = [
    "REGISTERED_AS_TORCH_OP",
    "SigattnError",
    "explain",
    "explain_with_kvcache",
    "find_executable",
    "get_log_level",
    "library_path",
    "set_database_path",
    "set_log_level",
    "set_online_tuning",
    "sigmoid_attention",
    "sigmoid_attention_padded",
    "sigmoid_attention_varlen",
    "sigmoid_attention_with_kvcache",
    "tune",
    "version",
]
