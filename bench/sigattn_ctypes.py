"""ctypes binding of libsigattn's C ABI (include/sigattn/sigattn.h) for torch tensors.

The structures below mirror sigattn_tensor and sigattn_forward_args field for field; the call
runs on torch's current CUDA stream and context.
"""

import ctypes
import math
import os

import torch


class Tensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("batch_stride", ctypes.c_int64),
        ("seq_stride", ctypes.c_int64),
        ("head_stride", ctypes.c_int64),
    ]


class ForwardArgs(ctypes.Structure):
    _fields_ = [
        ("dtype", ctypes.c_int),
        ("batch", ctypes.c_int32),
        ("heads_q", ctypes.c_int32),
        ("heads_kv", ctypes.c_int32),
        ("head_dim", ctypes.c_int32),
        ("max_seqlen_q", ctypes.c_int32),
        ("max_seqlen_k", ctypes.c_int32),
        ("q", Tensor),
        ("k", Tensor),
        ("v", Tensor),
        ("out", Tensor),
        ("seq_lens_q", ctypes.c_void_p),
        ("seq_lens_k", ctypes.c_void_p),
        ("cu_seqlens_q", ctypes.c_void_p),
        ("cu_seqlens_k", ctypes.c_void_p),
        ("score_mod", ctypes.c_void_p),
        ("score_mod_batch_stride", ctypes.c_int64),
        ("causal", ctypes.c_int32),
        ("window_left", ctypes.c_int32),
        ("window_right", ctypes.c_int32),
        ("has_scale", ctypes.c_int32),
        ("scale", ctypes.c_float),
        ("has_bias", ctypes.c_int32),
        ("bias", ctypes.c_float),
        ("sigmoid", ctypes.c_int),
        ("trust_lengths", ctypes.c_int32),
    ]


class BackwardArgs(ctypes.Structure):
    _fields_ = [
        ("inputs", ForwardArgs),
        ("grad_out", Tensor),
        ("grad_q", Tensor),
        ("grad_k", Tensor),
        ("grad_v", Tensor),
    ]


_DTYPES = {torch.bfloat16: 0, torch.float16: 1}


def load(path=None):
    path = path or os.environ.get("SIGATTN_LIBRARY", "libsigattn.so")
    lib = ctypes.CDLL(path)
    lib.sigattn_forward.argtypes = [ctypes.POINTER(ForwardArgs), ctypes.c_void_p]
    lib.sigattn_forward.restype = ctypes.c_int
    lib.sigattn_last_error.restype = ctypes.c_char_p
    lib.sigattn_forward_args_init.argtypes = [ctypes.POINTER(ForwardArgs)]
    lib.sigattn_backward.argtypes = [ctypes.POINTER(BackwardArgs), ctypes.c_void_p]
    lib.sigattn_backward.restype = ctypes.c_int
    lib.sigattn_backward_args_init.argtypes = [ctypes.POINTER(BackwardArgs)]
    return lib


def _bthd(t):
    # [B, T, H, D] view with the head dim contiguous; any other strides pass through unchanged.
    assert t.stride(3) == 1, "head dimension must be contiguous"
    return Tensor(t.data_ptr(), t.stride(0), t.stride(1), t.stride(2))


def _fill(args, q, k, v, causal, seq_lens_q, seq_lens_k, trust_lengths, sigmoid_accurate):
    args.dtype = _DTYPES[q.dtype]
    args.batch, args.max_seqlen_q, args.heads_q, args.head_dim = q.shape
    args.max_seqlen_k, args.heads_kv = k.shape[1], k.shape[2]
    args.q, args.k, args.v = _bthd(q), _bthd(k), _bthd(v)
    if seq_lens_q is not None:
        args.seq_lens_q = seq_lens_q.data_ptr()
    if seq_lens_k is not None:
        args.seq_lens_k = seq_lens_k.data_ptr()
    args.causal = int(causal)
    args.sigmoid = int(sigmoid_accurate)
    args.trust_lengths = int(trust_lengths)


def _check(lib, status, what):
    if status != 0:
        raise RuntimeError(f"{what} failed ({status}): {lib.sigattn_last_error().decode()}")


def forward(lib, q, k, v, out, *, causal=False, seq_lens_q=None, seq_lens_k=None,
            trust_lengths=True, sigmoid_accurate=False):
    """Sigmoid attention on [B, T, H, D] tensors into `out`; seq_lens_* are int32 cuda tensors."""
    args = ForwardArgs()
    lib.sigattn_forward_args_init(ctypes.byref(args))
    _fill(args, q, k, v, causal, seq_lens_q, seq_lens_k, trust_lengths, sigmoid_accurate)
    args.out = _bthd(out)
    stream = torch.cuda.current_stream().cuda_stream
    _check(lib, lib.sigattn_forward(ctypes.byref(args), ctypes.c_void_p(stream)), "sigattn_forward")
    return out


def backward(lib, q, k, v, dout, dq, dk, dv, *, causal=False, seq_lens_q=None, seq_lens_k=None,
             trust_lengths=True, sigmoid_accurate=False):
    """Gradients of sigmoid attention into dq, dk, dv for upstream gradient dout."""
    args = BackwardArgs()
    lib.sigattn_backward_args_init(ctypes.byref(args))
    _fill(args.inputs, q, k, v, causal, seq_lens_q, seq_lens_k, trust_lengths, sigmoid_accurate)
    args.grad_out, args.grad_q, args.grad_k, args.grad_v = (_bthd(t) for t in (dout, dq, dk, dv))
    stream = torch.cuda.current_stream().cuda_stream
    _check(lib, lib.sigattn_backward(ctypes.byref(args), ctypes.c_void_p(stream)),
           "sigattn_backward")


def default_scale(head_dim):
    return 1.0 / math.sqrt(head_dim)
