"""Sigmoid attention forward and backward as torch operators over the C ABI: torch.library custom
ops `sigattn::forward` / `sigattn::backward` with fake (meta) kernels and autograd (torch >= 2.4,
usable under torch.compile and CUDA graph capture), else a torch.autograd.Function (eager only).

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


def _tensor_ref(tensor, packed):
    """sigattn_tensor of a [B, T, H, D] (or packed [T, H, D]) tensor with a contiguous head dim.

    A dimension of extent 1 is never stepped over, so its stride is passed as 0 whatever torch
    reports for it; but a packed tensor of one token gets the stride of a whole row. The runtime
    sees its token count only when it reads cu_seqlens, and not at all under trust_lengths or
    graph capture, where it holds the token axis to max_seqlen rows; TMA maps need the stride
    too."""
    strides = [s if n > 1 else 0 for n, s in zip(tensor.shape, tensor.stride())]
    if packed:
        tokens, heads, head_dim = tensor.shape
        if tokens == 1:
            strides[0] = max(heads * strides[1], head_dim)
        return _library.Tensor(tensor.data_ptr(), 0, strides[0], strides[1])
    return _library.Tensor(tensor.data_ptr(), strides[0], strides[1], strides[2])


def _pointer(tensor):
    return None if tensor is None else tensor.data_ptr()


def _fill(args, q, k, v, seq_lens_q, seq_lens_k, cu_seqlens_q, cu_seqlens_k, score_mod,
          max_seqlen_q, max_seqlen_k, causal, window_left, window_right, scale, bias,
          accurate_sigmoid, trust_lengths):
    packed = q.dim() == 3
    args.dtype = _DTYPES[q.dtype]
    args.batch = cu_seqlens_q.shape[0] - 1 if packed else q.shape[0]
    args.heads_q, args.head_dim = q.shape[-2], q.shape[-1]
    args.heads_kv = k.shape[-2]
    args.max_seqlen_q, args.max_seqlen_k = max_seqlen_q, max_seqlen_k
    args.q, args.k, args.v = (_tensor_ref(t, packed) for t in (q, k, v))
    args.seq_lens_q, args.seq_lens_k = _pointer(seq_lens_q), _pointer(seq_lens_k)
    args.cu_seqlens_q, args.cu_seqlens_k = _pointer(cu_seqlens_q), _pointer(cu_seqlens_k)
    if score_mod is not None:
        args.score_mod = score_mod.data_ptr()
        # A single row's stride is never stepped over; the runtime still wants it >= max_seqlen_k.
        rows = score_mod.shape[0]
        args.score_mod_batch_stride = max_seqlen_k if rows == 1 else score_mod.stride(0)
    args.causal = int(causal)
    args.window_left, args.window_right = window_left, window_right
    if scale is not None:
        args.has_scale, args.scale = 1, scale
    if bias is not None:
        args.has_bias, args.bias = 1, bias
    args.sigmoid = _library.SIGMOID_ACCURATE if accurate_sigmoid else _library.SIGMOID_FAST
    # While a CUDA graph is captured the runtime cannot copy the lengths to the host to check
    # them; the kernels clamp them instead.
    args.trust_lengths = int(trust_lengths or torch.cuda.is_current_stream_capturing())


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
    lib = _library.library()
    out = _new_like(q)
    with torch.cuda.device(q.device):
        args = _library.ForwardArgs()
        lib.sigattn_forward_args_init(ctypes.byref(args))
        _fill(args, q, k, v, seq_lens_q, seq_lens_k, cu_seqlens_q, cu_seqlens_k, score_mod,
              max_seqlen_q, max_seqlen_k, causal, window_left, window_right, scale, bias,
              accurate_sigmoid, trust_lengths)
        args.out = _tensor_ref(out, q.dim() == 3)
        stream = torch.cuda.current_stream(q.device).cuda_stream
        status = lib.sigattn_forward(ctypes.byref(args), ctypes.c_void_p(stream))
    _library.check(status, "sigattn_forward")
    return out


def _backward_impl(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   seq_lens_q: Optional[torch.Tensor], seq_lens_k: Optional[torch.Tensor],
                   cu_seqlens_q: Optional[torch.Tensor], cu_seqlens_k: Optional[torch.Tensor],
                   score_mod: Optional[torch.Tensor], max_seqlen_q: int, max_seqlen_k: int,
                   causal: bool, window_left: int, window_right: int, scale: Optional[float],
                   bias: Optional[float], accurate_sigmoid: bool, trust_lengths: bool,
                   deterministic: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lib = _library.library()
    # Upstream gradients may be broadcast views (stride 0) or otherwise laid out unlike the
    # output; the runtime needs the head dim contiguous and distinct rows.
    if not grad_out.is_contiguous():
        grad_out = grad_out.contiguous()
    grad_q, grad_k, grad_v = _new_like(q), _new_like(k), _new_like(v)
    packed = q.dim() == 3
    with torch.cuda.device(q.device):
        args = _library.BackwardArgs()
        lib.sigattn_backward_args_init(ctypes.byref(args))
        _fill(args.inputs, q, k, v, seq_lens_q, seq_lens_k, cu_seqlens_q, cu_seqlens_k, score_mod,
              max_seqlen_q, max_seqlen_k, causal, window_left, window_right, scale, bias,
              accurate_sigmoid, trust_lengths)
        args.grad_out = _tensor_ref(grad_out, packed)
        args.grad_q = _tensor_ref(grad_q, packed)
        args.grad_k = _tensor_ref(grad_k, packed)
        args.grad_v = _tensor_ref(grad_v, packed)
        args.deterministic = int(deterministic)
        stream = torch.cuda.current_stream(q.device).cuda_stream
        status = lib.sigattn_backward(ctypes.byref(args), ctypes.c_void_p(stream))
    _library.check(status, "sigattn_backward")
    return grad_q, grad_k, grad_v


# The tensors among the operator's inputs, in order; the rest are plain options.
_TENSOR_INPUTS = 8


def _save(ctx, inputs):
    ctx.save_for_backward(*inputs[:_TENSOR_INPUTS])
    ctx.options = tuple(inputs[_TENSOR_INPUTS:])


def _input_gradients(ctx, grad_out, backward):
    saved = ctx.saved_tensors
    grad_q, grad_k, grad_v = backward(grad_out, *saved, *ctx.options)
    return (grad_q, grad_k, grad_v) + (None,) * (len(saved) - 3 + len(ctx.options))


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

    def attention(*inputs):
        """Runs sigattn::forward; inputs as _forward_impl takes them."""
        return forward_op(*inputs)

else:

    class _Attention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            _save(ctx, inputs)
            return _forward_impl(*inputs)

        @staticmethod
        def backward(ctx, grad_out):
            return _input_gradients(ctx, grad_out, _backward_impl)

    def attention(*inputs):
        """Runs the forward through torch.autograd.Function; inputs as _forward_impl takes them."""
        return _Attention.apply(*inputs)
