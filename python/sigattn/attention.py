"""The public sigmoid-attention functions: TritonSigmoid's call signatures (dense and padded
[B, T, H, D]) plus a packed varlen form. Every argument is checked here, before anything runs, and
a bad one raises TypeError or ValueError naming it.
"""

import math
import numbers

import torch

from . import _ops

_SUPPORTED_DTYPES = (torch.bfloat16, torch.float16)
_MAX_GRID_EXTENT = 65535  # batch and heads index CUDA grid dimensions
_MAX_SEQLEN = 1 << 24
_STRIDE_MULTIPLE = 8  # elements: 16 bytes, one vector load
_SIGMOID_MODES = ("fast", "accurate")
# The names of _run's tensors in errors, by layout: q, k, v, then the optional ones.
_OPTIONAL_NAMES = ("seq_lens_q", "seq_lens_k", "cu_seqlens_q", "cu_seqlens_k", "score_mod")
_BTHD_NAMES = ("query", "key", "value") + _OPTIONAL_NAMES
_PACKED_NAMES = ("q", "k", "v") + _OPTIONAL_NAMES
# Under torch.compile with dynamic shapes an int argument may arrive as a torch.SymInt.
_INT_TYPES = (numbers.Integral,) + ((torch.SymInt,) if hasattr(torch, "SymInt") else ())


def sigmoid_attention(query, key, value, is_causal=False, scale=None, sigmoid_bias=None,
                      score_mod=None, *, window=None, seq_lens_q=None, seq_lens_k=None,
                      sigmoid="fast", trust_lengths=False, deterministic=None):
    """Sigmoid attention on [batch, seq, heads, head_dim] (BTHD) tensors, with autograd.

    out[b, i, h] = sum_j sigmoid(scale * <q_i, k_j> + bias_b + score_mod[b, j]) * v_j over the
    valid keys j, accumulated in fp32.

    Args:
        query: [B, Tq, Hq, D] bf16 or fp16 CUDA tensor. Any strides with the head dim contiguous
            (stride 1) and the other strides multiples of 8 elements, e.g. a BHTD tensor
            transposed to a BTHD view; nothing is copied.
        key, value: [B, Tk, Hkv, D], the same dtype and device. Hq must be a multiple of Hkv
            (GQA/MQA: query head h reads kv head h // (Hq // Hkv)).
        is_causal: key j is visible to query i when j <= i + len_k - len_q (aligned bottom-right;
            with equal lengths, j <= i).
        scale: the score scale, default 1 / sqrt(D).
        sigmoid_bias: one scalar bias for every score, default -log(len_k) per sequence.
        score_mod: optional [B, Tk] per-key additive bias (not differentiated). Other float
            dtypes are converted to float32, and a non-contiguous one is copied.
        window: optional (left, right): keys at most `left` before and `right` after the
            diagonal; -1 leaves that side unbounded.
        seq_lens_q, seq_lens_k: optional [B] integer CUDA tensors of valid lengths (trailing
            padding). Query rows past seq_lens_q are zero; keys past seq_lens_k are not attended.
            Converted to int32 if needed.
        sigmoid: "fast" (tanh.approx, TritonSigmoid's default) or "accurate" (1 / (1 + exp(-x))).
        trust_lengths: skip the runtime's host check of the length tensors (one device-to-host
            copy and stream synchronization per call); out-of-range lengths are then clamped.
            The check is always skipped while a CUDA graph is being captured.
        deterministic: None (default): as torch.are_deterministic_algorithms_enabled() says.
            True: the backward gives bit-identical gradients from run to run. False: the
            fastest split, which may be the one-pass split (dQ accumulated with fp32 atomics;
            the gradients of q may then differ in the last bits between runs).

    Returns:
        [B, Tq, Hq, D] contiguous tensor of the query's dtype.
    """
    return _run(*_dense(query, key, value, seq_lens_q, seq_lens_k), is_causal, scale, sigmoid_bias,
                score_mod, window, sigmoid, trust_lengths, deterministic)


def sigmoid_attention_padded(query, key, value, seq_lens_k=None, seq_lens_q=None, is_causal=False,
                             scale=None, sigmoid_bias=None, score_mod=None, *, window=None,
                             sigmoid="fast", trust_lengths=False, deterministic=None):
    """TritonSigmoid's padded entry point (same argument order): sigmoid_attention with
    seq_lens_k / seq_lens_q. With seq_lens_q != seq_lens_k the causal diagonal is aligned
    bottom-right, where TritonSigmoid aligns it top-left."""
    return sigmoid_attention(query, key, value, is_causal, scale, sigmoid_bias, score_mod,
                             window=window, seq_lens_q=seq_lens_q, seq_lens_k=seq_lens_k,
                             sigmoid=sigmoid, trust_lengths=trust_lengths,
                             deterministic=deterministic)


def sigmoid_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
                             is_causal=False, window=None, scale=None, sigmoid_bias=None,
                             score_mod=None, sigmoid="fast", trust_lengths=False,
                             deterministic=None):
    """Sigmoid attention on packed [total_tokens, heads, head_dim] tensors, with autograd.

    Sequence b holds rows cu_seqlens_q[b]:cu_seqlens_q[b + 1] of q (and likewise of k and v with
    cu_seqlens_k). cu_seqlens_q / cu_seqlens_k are [B + 1] integer CUDA tensors starting at 0;
    max_seqlen_q / max_seqlen_k (Python ints) bound every sequence's length. score_mod, if given,
    is [B, max_seqlen_k], indexed by the key's position within its sequence. Output rows that
    belong to no sequence are zero. The other arguments are those of sigmoid_attention.
    """
    _check_tensors(q, k, v, packed=True)
    if cu_seqlens_q is None or cu_seqlens_k is None:
        raise ValueError("cu_seqlens_q and cu_seqlens_k are both required in the varlen layout")
    _check_length_tensor("cu_seqlens_q", cu_seqlens_q)
    batch = cu_seqlens_q.shape[0] - 1
    if batch < 1:
        raise ValueError(f"cu_seqlens_q must have at least 2 entries (batch + 1), got "
                         f"{cu_seqlens_q.shape[0]}")
    cu_seqlens_q = _lengths("cu_seqlens_q", cu_seqlens_q, (batch + 1,))
    cu_seqlens_k = _lengths("cu_seqlens_k", cu_seqlens_k, (batch + 1,))
    for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(value, bool) or not isinstance(value, _INT_TYPES):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return _run(q, k, v, None, None, cu_seqlens_q, cu_seqlens_k, batch, max_seqlen_q,
                max_seqlen_k, is_causal, scale, sigmoid_bias, score_mod, window, sigmoid,
                trust_lengths, deterministic)


def _dense(query, key, value, seq_lens_q, seq_lens_k):
    """The tensors and sizes of a [B, T, H, D] call, checked: _run's first ten arguments."""
    _check_tensors(query, key, value, packed=False)
    batch, max_seqlen_q = query.shape[0], query.shape[1]
    max_seqlen_k = key.shape[1]
    seq_lens_q = _lengths("seq_lens_q", seq_lens_q, (batch,))
    seq_lens_k = _lengths("seq_lens_k", seq_lens_k, (batch,))
    return query, key, value, seq_lens_q, seq_lens_k, None, None, batch, max_seqlen_q, max_seqlen_k


def _run(*arguments):
    """_ops.attention of the checked arguments, once every tensor is known to be on one GPU."""
    arguments = _checked(*arguments)
    # The tensors lead the arguments: q, k, v, seq_lens_q, seq_lens_k, cu_seqlens_q,
    # cu_seqlens_k, score_mod.
    _check_devices(_PACKED_NAMES if arguments[5] is not None else _BTHD_NAMES, arguments[:8])
    return _ops.attention(*arguments)


def _checked(q, k, v, seq_lens_q, seq_lens_k, cu_seqlens_q, cu_seqlens_k, batch, max_seqlen_q,
             max_seqlen_k, is_causal, scale, sigmoid_bias, score_mod, window, sigmoid,
             trust_lengths, deterministic):
    """The arguments of _ops.attention, every one checked but the tensors' devices."""
    _check_range("batch", batch, 1, _MAX_GRID_EXTENT)
    _check_range("max_seqlen_q", max_seqlen_q, 1, _MAX_SEQLEN)
    _check_range("max_seqlen_k", max_seqlen_k, 1, _MAX_SEQLEN)
    if score_mod is not None:
        score_mod = _score_mod(score_mod, batch, max_seqlen_k)
    window_left, window_right = _window(window)
    scale, sigmoid_bias = _scale_and_bias(scale, sigmoid_bias)
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    elif not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be None, True or False, got {deterministic!r}")
    return (q, k, v, seq_lens_q, seq_lens_k, cu_seqlens_q, cu_seqlens_k, score_mod, max_seqlen_q,
            max_seqlen_k, bool(is_causal), window_left, window_right, scale, sigmoid_bias,
            _accurate_sigmoid(sigmoid), bool(trust_lengths), deterministic)


def _scale_and_bias(scale, sigmoid_bias):
    """scale and sigmoid_bias as floats (None stays None: the defaults), checked."""
    if scale is not None:
        scale = float(scale)
        if not (math.isfinite(scale) and scale > 0.0):
            raise ValueError(f"scale = {scale} must be finite and > 0")
    if sigmoid_bias is not None:
        sigmoid_bias = float(sigmoid_bias)
        if not math.isfinite(sigmoid_bias):
            raise ValueError(f"sigmoid_bias = {sigmoid_bias} must be finite")
    return scale, sigmoid_bias


def _accurate_sigmoid(sigmoid):
    """Whether `sigmoid` names the accurate form; anything but "fast" or "accurate" is an error."""
    if sigmoid not in _SIGMOID_MODES:
        raise ValueError(f"sigmoid = {sigmoid!r} must be one of {_SIGMOID_MODES}")
    return sigmoid == "accurate"


def _check_range(name, value, low, high):
    if value < low or value > high:
        raise ValueError(f"{name} = {value} is out of range [{low}, {high}]")


def _check_tensors(q, k, v, packed):
    names = _PACKED_NAMES if packed else _BTHD_NAMES
    rank = 3 if packed else 4
    for name, tensor in zip(names, (q, k, v)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != rank:
            layout = "[total_tokens, heads, head_dim]" if packed else "[batch, seq, heads, head_dim]"
            raise ValueError(f"{name} must be {rank}-D {layout}, got shape {tuple(tensor.shape)}")
        if tensor.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"{name} has dtype {tensor.dtype}; sigattn supports torch.bfloat16 "
                            f"and torch.float16 (cast with .to(torch.bfloat16))")
    qn, kn, vn = names[:3]
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"{qn}, {kn} and {vn} must have one dtype, got {q.dtype}, {k.dtype}, "
                        f"{v.dtype}")
    q_shape, k_shape = q.shape, k.shape
    if k_shape != v.shape:
        raise ValueError(f"{kn} and {vn} must have the same shape, got {tuple(k_shape)} and "
                         f"{tuple(v.shape)}")
    if not packed and q_shape[0] != k_shape[0]:
        raise ValueError(f"batch size mismatch: {qn} has {q_shape[0]}, {kn} and {vn} have "
                         f"{k_shape[0]}")
    heads_q, heads_kv, head_dim = q_shape[-2], k_shape[-2], q_shape[-1]
    if head_dim != k_shape[-1]:
        raise ValueError(f"head dim mismatch: {qn} has {head_dim}, {kn} and {vn} have "
                         f"{k_shape[-1]}")
    _check_range(f"{qn} heads", heads_q, 1, _MAX_GRID_EXTENT)
    if heads_kv < 1 or heads_q % heads_kv != 0:
        raise ValueError(f"{qn} has {heads_q} heads, which is not a multiple of the {heads_kv} "
                         f"heads of {kn} and {vn} (GQA/MQA needs heads_q % heads_kv == 0)")
    if head_dim % 8 != 0 or not 8 <= head_dim <= 256:
        raise ValueError(f"head_dim = {head_dim} is not supported: it must be a multiple of 8 "
                         f"from 8 to 256")
    _check_strides(qn, q)
    _check_strides(kn, k)
    _check_strides(vn, v)


def _check_strides(name, tensor):
    strides = tensor.stride()
    if strides[-1] != 1:
        raise ValueError(f"{name} has head-dim stride {strides[-1]}: the head dimension must "
                         f"be contiguous (stride 1); pass {name}.contiguous() (a copy)")
    for dim, (size, stride) in enumerate(zip(tensor.shape, strides[:-1])):
        if size > 1 and (stride < 0 or stride % _STRIDE_MULTIPLE != 0):
            raise ValueError(f"{name}.stride({dim}) = {stride} must be a non-negative multiple "
                             f"of {_STRIDE_MULTIPLE} elements (16 bytes); pass "
                             f"{name}.contiguous() (a copy)")


def _check_length_tensor(name, tensor):
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (int32), got {tensor.dtype}")


def _lengths(name, tensor, shape):
    """A length tensor as the runtime reads it: int32, contiguous (converted when needed)."""
    if tensor is None:
        return None
    _check_length_tensor(name, tensor)
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
    if tensor.dtype != torch.int32:
        tensor = tensor.to(torch.int32)
    return tensor if tensor.is_contiguous() else tensor.contiguous()


def _score_mod(score_mod, batch, max_seqlen_k, keys="max_seqlen_k"):
    """score_mod as the runtime reads it: float32 [batch, max_seqlen_k], contiguous; `keys` names
    the key count in errors."""
    if not isinstance(score_mod, torch.Tensor):
        raise TypeError(f"score_mod must be a torch.Tensor, got {type(score_mod).__name__}")
    if not score_mod.dtype.is_floating_point:
        raise TypeError(f"score_mod must be a floating tensor (float32), got {score_mod.dtype}")
    if tuple(score_mod.shape) != (batch, max_seqlen_k):
        raise ValueError(f"score_mod must have shape ({batch}, {max_seqlen_k}) = (batch, "
                         f"{keys}), got {tuple(score_mod.shape)}")
    if score_mod.dtype != torch.float32:
        score_mod = score_mod.to(torch.float32)
    return score_mod if score_mod.is_contiguous() else score_mod.contiguous()


def _window(window):
    if window is None:
        return -1, -1
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise ValueError(f"window must be None or a (left, right) pair, got {window!r}")
    left, right = window
    for name, value in (("window left", left), ("window right", right)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < -1:
            raise ValueError(f"{name} = {value!r} must be an int >= -1 (-1: unbounded)")
    return int(left), int(right)


def _check_devices(names, tensors):
    """Every tensor given (None: absent) is on one CUDA device, the first one's."""
    index = tensors[0].get_device()
    for name, tensor in zip(names, tensors):
        if tensor is None:
            continue
        if not tensor.is_cuda:
            hint = "" if torch.cuda.is_available() else (
                " (torch.cuda.is_available() is False: this process sees no CUDA GPU)")
            raise ValueError(f"{name} is on {tensor.device}: sigattn runs on CUDA GPUs only, "
                             f"every tensor must be a CUDA tensor{hint}")
        if tensor.get_device() != index:
            raise ValueError(f"all tensors must be on one device: {names[0]} is on "
                             f"{tensors[0].device}, {name} on {tensor.device}")
