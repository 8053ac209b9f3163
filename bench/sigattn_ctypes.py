"""Direct calls of libsigattn's C ABI for the benchmark: the argument structures and the library
come from the Python package (python/sigattn/_library.py); outputs are preallocated by the caller
so that a timed call is the library call alone. Runs on torch's current CUDA stream.
"""

import ctypes
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from sigattn import _library  # noqa: E402

_DTYPES = {torch.bfloat16: _library.DTYPE_BF16, torch.float16: _library.DTYPE_FP16}


def load(path=None):
    """The library at `path` (else $SIGATTN_LIBRARY, else the package's search)."""
    if path:
        os.environ[_library.LIBRARY_VARIABLE] = os.path.abspath(path)
    return _library.library()


def _bthd(t):
    # [B, T, H, D] view with the head dim contiguous; any other strides pass through unchanged.
    assert t.stride(3) == 1, "head dimension must be contiguous"
    return _library.Tensor(t.data_ptr(), t.stride(0), t.stride(1), t.stride(2))


def _fill(args, q, k, v, causal, seq_lens_q, seq_lens_k, trust_lengths, sigmoid_accurate,
          window=None, packed=None):
    args.dtype = _DTYPES[q.dtype]
    args.batch, args.max_seqlen_q, args.heads_q, args.head_dim = q.shape
    args.max_seqlen_k, args.heads_kv = k.shape[1], k.shape[2]
    args.q, args.k, args.v = _bthd(q), _bthd(k), _bthd(v)
    if seq_lens_q is not None:
        args.seq_lens_q = seq_lens_q.data_ptr()
    if seq_lens_k is not None:
        args.seq_lens_k = seq_lens_k.data_ptr()
    if packed is not None:
        # Packed varlen: q, k, v are [1, total_tokens, H, D]; packed = (cu_seqlens, max_seqlen)
        # for both sides.
        cu_seqlens, max_seqlen = packed
        args.batch = cu_seqlens.numel() - 1
        args.max_seqlen_q = args.max_seqlen_k = max_seqlen
        args.cu_seqlens_q = args.cu_seqlens_k = cu_seqlens.data_ptr()
    if window is not None:
        args.window_left, args.window_right = window
    args.causal = int(causal)
    args.sigmoid = _library.SIGMOID_ACCURATE if sigmoid_accurate else _library.SIGMOID_FAST
    args.trust_lengths = int(trust_lengths)


def forward(lib, q, k, v, out, *, causal=False, seq_lens_q=None, seq_lens_k=None,
            trust_lengths=True, sigmoid_accurate=False, window=None, packed=None):
    """Sigmoid attention on [B, T, H, D] tensors into `out`; seq_lens_* are int32 cuda tensors,
    window (left, right) keys, packed (int32 cu_seqlens, max_seqlen) for [1, tokens, H, D]."""
    args = _library.ForwardArgs()
    lib.sigattn_forward_args_init(ctypes.byref(args))
    _fill(args, q, k, v, causal, seq_lens_q, seq_lens_k, trust_lengths, sigmoid_accurate, window,
          packed)
    args.out = _bthd(out)
    stream = torch.cuda.current_stream().cuda_stream
    _library.check(lib.sigattn_forward(ctypes.byref(args), ctypes.c_void_p(stream)),
                   "sigattn_forward")
    return out


def backward(lib, q, k, v, dout, dq, dk, dv, *, causal=False, seq_lens_q=None, seq_lens_k=None,
             trust_lengths=True, sigmoid_accurate=False, deterministic=True, window=None,
             packed=None):
    """Gradients of sigmoid attention into dq, dk, dv for upstream gradient dout."""
    args = _library.BackwardArgs()
    lib.sigattn_backward_args_init(ctypes.byref(args))
    _fill(args.inputs, q, k, v, causal, seq_lens_q, seq_lens_k, trust_lengths, sigmoid_accurate,
          window, packed)
    args.grad_out, args.grad_q, args.grad_k, args.grad_v = (_bthd(t) for t in (dout, dq, dk, dv))
    args.deterministic = int(deterministic)
    stream = torch.cuda.current_stream().cuda_stream
    _library.check(lib.sigattn_backward(ctypes.byref(args), ctypes.c_void_p(stream)),
                   "sigattn_backward")


def default_scale(head_dim):
    return 1.0 / math.sqrt(head_dim)
