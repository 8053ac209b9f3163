"""Sigmoid attention forward and backward as torch operators over the C ABI, on the cheapest path
that serves each call:
- eager, no gradient needed: the C call directly;
- eager with autograd: a torch.autograd.Function around the same calls;
- traced (torch.compile, torch.export, fake tensors, dispatch modes; torch >= 2.4): the
  torch.library custom ops `sigattn::forward` / `sigattn::backward` with fake kernels and autograd.
The custom ops are registered at import, which is cheap; their first call imports torch's
compiler stack (seconds), which the eager paths never touch.

Arguments arrive validated (see attention.py); the tensors are passed with their strides.
"""

import ctypes
import re
from typing import Optional, Tuple

import torch

from . import _library

_DTYPES = {torch.bfloat16: _library.DTYPE_BF16, torch.float16: _library.DTYPE_FP16}


def _torch_version():
    match = re.match(r"(\d+)\.(\d+)", torch.__version__)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


# torch.library.custom_op with register_fake / register_autograd is public from torch 2.4 (2.3
# had a private one of another signature).
REGISTERED_AS_TORCH_OP = _torch_version() >= (2, 4) and hasattr(torch.library, "custom_op")


class _CAbi:
    """The C entry points and the argument structures as sigattn_*_args_init fills them, taken
    from the library once (on the first call, so that importing needs no library)."""

    def __init__(self, lib):
        self.forward = lib.sigattn_forward
        self.backward = lib.sigattn_backward
        forward_args = _library.ForwardArgs()
        lib.sigattn_forward_args_init(ctypes.byref(forward_args))
        self.forward_defaults = bytes(forward_args)
        backward_args = _library.BackwardArgs()
        lib.sigattn_backward_args_init(ctypes.byref(backward_args))
        self.backward_defaults = bytes(backward_args)
        self.forward_with_kvcache = lib.sigattn_forward_with_kvcache
        self.kvcache_workspace_bytes = lib.sigattn_kvcache_workspace_bytes
        kvcache_args = _library.KvCacheArgs()
        lib.sigattn_kvcache_args_init(ctypes.byref(kvcache_args))
        self.kvcache_defaults = bytes(kvcache_args)


_c_abi = None


def _abi():
    global _c_abi
    if _c_abi is None:
        _c_abi = _CAbi(_library.library())
    return _c_abi


def _cuda_function(name, fallback):
    """torch._C's CUDA query `name` where this torch has it (a CPU-only build has not)."""
    return getattr(torch._C, name, fallback)


# The raw cudaStream_t of a device's current stream, without building a torch.cuda.Stream.
_current_raw_stream = _cuda_function("_cuda_getCurrentRawStream",
                                     lambda index: torch.cuda.current_stream(index).cuda_stream)
_is_stream_capturing = _cuda_function("_cuda_isCurrentStreamCapturing",
                                      torch.cuda.is_current_stream_capturing)
_current_device = _cuda_function("_cuda_getDevice", torch.cuda.current_device)


def _run_on_device(index, call, args):
    """call(args, stream) on device `index` and its current stream; the device is made current
    only when it is not already."""
    if index == _current_device():
        return call(args, _current_raw_stream(index))
    with torch.cuda.device(index):
        return call(args, _current_raw_stream(index))


def _tensor_ref(tensor, packed):
    """sigattn_tensor of a [B, T, H, D] (or packed [T, H, D]) tensor with a contiguous head dim.

    A dimension of extent 1 is never stepped over, so its stride is passed as 0 whatever torch
    reports for it; but a packed tensor of one token gets the stride of a whole row. The runtime
    sees its token count only when it reads cu_seqlens, and not at all under trust_lengths or
    graph capture, where it holds the token axis to max_seqlen rows; TMA maps need the stride
    too."""
    shape, strides = tensor.shape, tensor.stride()
    if packed:
        head_stride = strides[1] if shape[1] > 1 else 0
        seq_stride = strides[0] if shape[0] > 1 else max(shape[1] * head_stride, shape[2])
        return _library.Tensor(tensor.data_ptr(), 0, seq_stride, head_stride)
    return _library.Tensor(tensor.data_ptr(), strides[0] if shape[0] > 1 else 0,
                           strides[1] if shape[1] > 1 else 0, strides[2] if shape[2] > 1 else 0)


def _pointer(tensor):
    return None if tensor is None else tensor.data_ptr()


def _fill(args, q, k, v, seq_lens_q, seq_lens_k, cu_seqlens_q, cu_seqlens_k, score_mod,
          max_seqlen_q, max_seqlen_k, causal, window_left, window_right, scale, bias,
          accurate_sigmoid, trust_lengths):
    packed = q.dim() == 3
    q_shape = q.shape
    args.dtype = _DTYPES[q.dtype]
    args.batch = cu_seqlens_q.shape[0] - 1 if packed else q_shape[0]
    args.heads_q, args.head_dim = q_shape[-2], q_shape[-1]
    args.heads_kv = k.shape[-2]
    args.max_seqlen_q, args.max_seqlen_k = max_seqlen_q, max_seqlen_k
    args.q = _tensor_ref(q, packed)
    args.k = _tensor_ref(k, packed)
    args.v = _tensor_ref(v, packed)
    if packed:
        args.cu_seqlens_q, args.cu_seqlens_k = cu_seqlens_q.data_ptr(), cu_seqlens_k.data_ptr()
    else:
        args.seq_lens_q, args.seq_lens_k = _pointer(seq_lens_q), _pointer(seq_lens_k)
    _fill_options(args, score_mod, max_seqlen_k, causal, window_left, window_right, scale, bias,
                  accurate_sigmoid, trust_lengths)


def _fill_options(args, score_mod, keys, causal, window_left, window_right, scale, bias,
                  accurate_sigmoid, trust_lengths):
    """The fields forward and KV-cache calls share: score_mod over `keys` keys and the options."""
    if score_mod is not None:
        args.score_mod = score_mod.data_ptr()
        # A single row's stride is never stepped over; the runtime still wants it >= the keys.
        args.score_mod_batch_stride = keys if score_mod.shape[0] == 1 else score_mod.stride(0)
    args.causal = causal
    args.window_left, args.window_right = window_left, window_right
    if scale is not None:
        args.has_scale, args.scale = 1, scale
    if bias is not None:
        args.has_bias, args.bias = 1, bias
    args.sigmoid = _library.SIGMOID_ACCURATE if accurate_sigmoid else _library.SIGMOID_FAST
    # While a CUDA graph is captured the runtime cannot copy the lengths to the host to check
    # them; the kernels clamp them instead.
    args.trust_lengths = trust_lengths or _is_stream_capturing()


def _new_like(tensor):
    # In the packed layout rows past cu_seqlens[-1] belong to no sequence and are not written.
    return tensor.new_zeros(tensor.shape) if tensor.dim() == 3 else tensor.new_empty(tensor.shape)


def _forward_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  seq_lens_q: Optional[torch.Tensor], seq_lens_k: Optional[torch.Tensor],
                  cu_seqlens_q: Optional[torch.Tensor], cu_seqlens_k: Optional[torch.Tensor],
                  score_mod: Optional[torch.Tensor], max_seqlen_q: int, max_seqlen_k: int,
                  causal: bool, window_left: int, window_right: int, scale: Optional[float],
                  bias: Optional[float], accurate_sigmoid: bool, trust_lengths: bool,
                  deterministic: bool) -> torch.Tensor:
    # `deterministic` only concerns the backward; the forward takes it so that autograd saves it
    # with the other options.
    abi = _abi()
    out = _new_like(q)
    args = _library.ForwardArgs.from_buffer_copy(abi.forward_defaults)
    _fill(args, q, k, v, seq_lens_q, seq_lens_k, cu_seqlens_q, cu_seqlens_k, score_mod,
          max_seqlen_q, max_seqlen_k, causal, window_left, window_right, scale, bias,
          accurate_sigmoid, trust_lengths)
    args.out = _tensor_ref(out, q.dim() == 3)
    status = _run_on_device(q.get_device(), abi.forward, args)
    if status != 0:
        _library.check(status, "sigattn_forward")
    return out


def _backward_impl(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   seq_lens_q: Optional[torch.Tensor], seq_lens_k: Optional[torch.Tensor],
                   cu_seqlens_q: Optional[torch.Tensor], cu_seqlens_k: Optional[torch.Tensor],
                   score_mod: Optional[torch.Tensor], max_seqlen_q: int, max_seqlen_k: int,
                   causal: bool, window_left: int, window_right: int, scale: Optional[float],
                   bias: Optional[float], accurate_sigmoid: bool, trust_lengths: bool,
                   deterministic: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    abi = _abi()
    # Upstream gradients may be broadcast views (stride 0) or otherwise laid out unlike the
    # output; the runtime needs the head dim contiguous and distinct rows.
    if not grad_out.is_contiguous():
        grad_out = grad_out.contiguous()
    grad_q, grad_k, grad_v = _new_like(q), _new_like(k), _new_like(v)
    packed = q.dim() == 3
    args = _library.BackwardArgs.from_buffer_copy(abi.backward_defaults)
    _fill(args.inputs, q, k, v, seq_lens_q, seq_lens_k, cu_seqlens_q, cu_seqlens_k, score_mod,
          max_seqlen_q, max_seqlen_k, causal, window_left, window_right, scale, bias,
          accurate_sigmoid, trust_lengths)
    args.grad_out = _tensor_ref(grad_out, packed)
    args.grad_q = _tensor_ref(grad_q, packed)
    args.grad_k = _tensor_ref(grad_k, packed)
    args.grad_v = _tensor_ref(grad_v, packed)
    args.deterministic = deterministic
    status = _run_on_device(q.get_device(), abi.backward, args)
    if status != 0:
        _library.check(status, "sigattn_backward")
    return grad_q, grad_k, grad_v


# The tensors among the operator's inputs, in order; the rest are plain options.
_TENSOR_INPUTS = 8
_SCORE_MOD = 7


def _save(ctx, inputs):
    ctx.save_for_backward(*inputs[:_TENSOR_INPUTS])
    ctx.options = tuple(inputs[_TENSOR_INPUTS:])


def _input_gradients(ctx, grad_out, backward):
    saved = ctx.saved_tensors
    grad_q, grad_k, grad_v = backward(grad_out, *saved, *ctx.options)
    return (grad_q, grad_k, grad_v) + (None,) * (len(saved) - 3 + len(ctx.options))


class _Attention(torch.autograd.Function):
    """The eager autograd path: the forward and backward calls without torch.library dispatch."""

    @staticmethod
    def forward(ctx, *inputs):
        _save(ctx, inputs)
        return _forward_impl(*inputs)

    @staticmethod
    def backward(ctx, grad_out):
        return _input_gradients(ctx, grad_out, _backward_impl)


def _needs_gradient(inputs):
    if not torch.is_grad_enabled():
        return False
    score_mod = inputs[_SCORE_MOD]
    return (inputs[0].requires_grad or inputs[1].requires_grad or inputs[2].requires_grad or
            (score_mod is not None and score_mod.requires_grad))


def _eager(inputs):
    """The eager paths: the C call alone when no gradient is needed, else the autograd.Function."""
    if _needs_gradient(inputs):
        return _Attention.apply(*inputs)
    return _forward_impl(*inputs)


if REGISTERED_AS_TORCH_OP:
    forward_op = torch.library.custom_op("sigattn::forward", _forward_impl, mutates_args=())
    backward_op = torch.library.custom_op("sigattn::backward", _backward_impl, mutates_args=())

    @forward_op.register_fake
    def _forward_fake(q, k, v, *options):
        return q.new_empty(q.shape)

    @backward_op.register_fake
    def _backward_fake(grad_out, q, k, v, *options):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    def _setup_context(ctx, inputs, output):
        _save(ctx, inputs)

    def _backward(ctx, grad_out):
        return _input_gradients(ctx, grad_out, backward_op)

    forward_op.register_autograd(_backward, setup_context=_setup_context)

    _dispatch_modes_active = torch._C._len_torch_dispatch_stack
    _PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)

    def traced(tensor):
        """Whether a call with this first tensor is traced: torch.compile, torch.export, a
        dispatch mode, or a tensor subclass such as FakeTensor."""
        return (torch.compiler.is_compiling() or _dispatch_modes_active() > 0 or
                type(tensor) not in _PLAIN_TENSOR_TYPES)

    def attention(*inputs):
        """sigmoid attention; inputs as _forward_impl takes them. Traced calls go through
        sigattn::forward so that the tracer sees the op; eager calls skip its dispatch."""
        if traced(inputs[0]):
            return forward_op(*inputs)
        return _eager(inputs)

else:

    def traced(tensor):
        """Without torch.library custom ops no call is taken through one."""
        return False

    def attention(*inputs):
        """sigmoid attention; inputs as _forward_impl takes them."""
        return _eager(inputs)
