"""Sigmoid attention against a KV cache, for inference: decode (one query row per sequence),
speculative decoding and chunked prefill (a few rows), on a contiguous or a paged cache, with the
new keys and values appended into the cache by the same call. Every argument is checked here,
before anything runs; a bad one raises TypeError or ValueError naming it.
"""

import ctypes
from typing import Optional

import torch

from . import _library, _ops
from .attention import (_MAX_GRID_EXTENT, _SUPPORTED_DTYPES, _accurate_sigmoid, _check_devices,
                        _check_length_tensor, _check_range, _check_strides, _lengths,
                        _scale_and_bias, _score_mod, _window)

_NAMES = ("q", "k_cache", "v_cache", "cache_seqlens", "block_table", "k_new", "v_new",
          "score_mod")


def sigmoid_attention_with_kvcache(q, k_cache, v_cache, cache_seqlens, *, k_new=None, v_new=None,
                                   block_table=None, is_causal=True, window=None, scale=None,
                                   sigmoid_bias=None, score_mod=None, sigmoid="fast",
                                   trust_lengths=False):
    """Sigmoid attention of q against a KV cache, after appending k_new / v_new to it.

    Sequence b's cache holds cache_seqlens[b] positions before the call. k_new[b] and v_new[b]
    (if given) are written at positions cache_seqlens[b] .. cache_seqlens[b] + seqlen_new - 1, in
    place, and q then attends to the cache_seqlens[b] + seqlen_new positions after that append:
    query i sits at position len - seqlen_q + i. cache_seqlens is not changed: advancing it by
    seqlen_new is the caller's step. There is no autograd: this is an inference call.

    Args:
        q: [B, seqlen_q, Hq, D] bf16 or fp16 CUDA tensor (seqlen_q = 1 for a decode step).
        k_cache, v_cache: the cache, the same dtype. Contiguous: [B, max_len, Hkv, D]. Paged
            (block_table given): [num_blocks, block_size, Hkv, D] (vLLM's layout). Hq must be a
            multiple of Hkv. Any strides with the head dim contiguous and the others multiples of
            8 elements.
        cache_seqlens: [B] integer CUDA tensor, the cache lengths before the append.
        k_new, v_new: optional [B, seqlen_new, Hkv, D] keys and values to append (both or
            neither; seqlen_new = 0 appends nothing).
        block_table: optional [B, max_blocks] integer CUDA tensor: entry [b, i] is the block that
            holds positions i * block_size .. (i + 1) * block_size - 1 of sequence b.
        is_causal: a query sees the positions up to its own (default True).
        window: optional (left, right): positions at most `left` before and `right` after the
            query's; -1 leaves that side unbounded.
        scale: the score scale, default 1 / sqrt(D).
        sigmoid_bias: one scalar bias for every score, default -log(len) per sequence, len being
            the cache length after the append. A model trained with a fixed bias -log(n) needs
            that same value at every decode step: pass it here.
        score_mod: optional [B, capacity] per-position additive bias, capacity being max_len or
            max_blocks * block_size (converted to contiguous float32 when needed).
        sigmoid: "fast" (tanh.approx) or "accurate" (1 / (1 + exp(-x))).
        trust_lengths: skip the runtime's host check of cache_seqlens and block_table (one
            device-to-host copy and synchronization per call); they are then clamped in the
            kernels (always so while a CUDA graph is captured, which this call supports).

    Returns:
        [B, seqlen_q, Hq, D] contiguous tensor of q's dtype.
    """
    tensors = (q, k_cache, v_cache, cache_seqlens, block_table, k_new, v_new, score_mod)
    # Traced calls (torch.compile, fake tensors) always take the checks and the custom op.
    signature = None if _ops.traced(q) else _signature(
        tensors, (is_causal, window, scale, sigmoid_bias, sigmoid, trust_lengths))
    prepared = _prepared.get(signature) if signature is not None else None
    if prepared is not None:
        return prepared.run(tensors)
    arguments = _checked(q, k_cache, v_cache, cache_seqlens, k_new, v_new, block_table, is_causal,
                         window, scale, sigmoid_bias, score_mod, sigmoid, trust_lengths)
    _check_devices(_NAMES, arguments[:8])
    out = _attention_with_kvcache(*arguments)
    # Calls whose tensors needed no conversion repeat without the checks.
    if signature is not None and all(a is t for a, t in zip(arguments, tensors)):
        if len(_prepared) >= _MAX_PREPARED:
            _prepared.clear()
        _prepared[signature] = _PreparedCall(arguments)
    return out


# Checked calls by signature (_signature): the tensors' shapes, strides, dtypes and devices and the
# options, everything the checks read. A call of a known signature skips them and fills only the
# pointers of an argument structure built once (a decode loop is bound by host time).
_prepared = {}
_MAX_PREPARED = 256


def _signature(tensors, options):
    """A hashable key of everything _checked and _check_devices read, or None (a non-tensor
    argument, or an option that is not hashable: such calls always take the checks)."""
    parts = []
    for tensor in tensors:
        if tensor is None:
            parts.append(None)
        elif type(tensor) is torch.Tensor:
            parts.append((tensor.shape, tensor.stride(), tensor.dtype, tensor.device))
        else:
            return None
    key = (tuple(parts), options)
    try:
        hash(key)
    except TypeError:
        return None
    return key


class _PreparedCall:
    """The argument structure of a checked call with its pointers left to fill, its workspace
    size and device."""

    def __init__(self, arguments):
        q = arguments[0]
        abi = _ops._abi()
        out = q.new_empty(q.shape)
        args = kvcache_args(abi.kvcache_defaults, out, *arguments)
        self.template = bytes(args)
        self.device = q.get_device()
        self.workspace_bytes = _workspace_size(abi, self.device, args)
        self.call = abi.forward_with_kvcache

    def run(self, tensors):
        q, k_cache, v_cache, cache_seqlens, block_table, k_new, v_new, score_mod = tensors
        out = q.new_empty(q.shape)
        args = _library.KvCacheArgs.from_buffer_copy(self.template)
        args.q.data = q.data_ptr()
        args.out.data = out.data_ptr()
        args.k_cache.data = k_cache.data_ptr()
        args.v_cache.data = v_cache.data_ptr()
        args.cache_seqlens = cache_seqlens.data_ptr()
        if block_table is not None:
            args.block_table = block_table.data_ptr()
        if args.seqlen_new > 0:
            args.k_new.data = k_new.data_ptr()
            args.v_new.data = v_new.data_ptr()
        if score_mod is not None:
            args.score_mod = score_mod.data_ptr()
        workspace = _workspace(args, self.workspace_bytes, q.device)
        status = _ops._run_on_device(self.device, self.call, args)
        if status != 0:
            _library.check(status, "sigattn_forward_with_kvcache")
        del workspace
        return out


def _checked(q, k_cache, v_cache, cache_seqlens, k_new, v_new, block_table, is_causal, window,
             scale, sigmoid_bias, score_mod, sigmoid, trust_lengths):
    """The arguments of _forward_impl, every one checked but the tensors' devices."""
    batch, seqlen_q, heads_q, head_dim = _check_attention_tensor("q", q, None)
    _check_attention_tensor("k_cache", k_cache, q.dtype)
    _check_attention_tensor("v_cache", v_cache, q.dtype)
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache and v_cache must have the same shape, got "
                         f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    heads_kv = k_cache.shape[2]
    if k_cache.shape[3] != head_dim:
        raise ValueError(f"head dim mismatch: q has {head_dim}, k_cache and v_cache have "
                         f"{k_cache.shape[3]}")
    _check_range("q heads", heads_q, 1, _MAX_GRID_EXTENT)
    if heads_q % heads_kv != 0:
        raise ValueError(f"q has {heads_q} heads, which is not a multiple of the {heads_kv} heads "
                         f"of k_cache and v_cache (GQA/MQA needs heads_q % heads_kv == 0)")
    if head_dim % 8 != 0 or not 8 <= head_dim <= 256:
        raise ValueError(f"head_dim = {head_dim} is not supported: it must be a multiple of 8 "
                         f"from 8 to 256")
    _check_range("batch", batch, 1, _MAX_GRID_EXTENT)
    if block_table is None:
        if k_cache.shape[0] != batch:
            raise ValueError(f"batch size mismatch: q has {batch}, the contiguous k_cache and "
                             f"v_cache have {k_cache.shape[0]} (pass block_table for a paged "
                             f"cache)")
        capacity = k_cache.shape[1]
    else:
        _check_length_tensor("block_table", block_table)
        if block_table.dim() != 2 or block_table.shape[0] != batch:
            raise ValueError(f"block_table must be [batch, max_blocks] with batch = {batch}, got "
                             f"shape {tuple(block_table.shape)}")
        block_table = _lengths("block_table", block_table, tuple(block_table.shape))
        capacity = block_table.shape[1] * k_cache.shape[1]
    cache_seqlens = _lengths("cache_seqlens", cache_seqlens, (batch,))
    if cache_seqlens is None:
        raise ValueError("cache_seqlens is required: the [batch] cache lengths before the append")
    if (k_new is None) != (v_new is None):
        raise ValueError("k_new and v_new must be given together")
    if k_new is not None:
        _check_attention_tensor("k_new", k_new, q.dtype)
        _check_attention_tensor("v_new", v_new, q.dtype)
        expected = (batch, k_new.shape[1], heads_kv, head_dim)
        for name, tensor in (("k_new", k_new), ("v_new", v_new)):
            if tuple(tensor.shape) != expected:
                raise ValueError(f"{name} must have shape {expected} = (batch, seqlen_new, "
                                 f"heads_kv, head_dim), got {tuple(tensor.shape)}")
        if k_new.shape[1] > capacity:
            raise ValueError(f"seqlen_new = {k_new.shape[1]} new tokens do not fit a cache of "
                             f"{capacity} positions per sequence")
    for name, tensor in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("k_new", k_new),
                         ("v_new", v_new)):
        if tensor is not None:
            _check_strides(name, tensor)
    if score_mod is not None:
        score_mod = _score_mod(score_mod, batch, capacity, keys="cache capacity")
    window_left, window_right = _window(window)
    scale, sigmoid_bias = _scale_and_bias(scale, sigmoid_bias)
    accurate = _accurate_sigmoid(sigmoid)
    return (q, k_cache, v_cache, cache_seqlens, block_table, k_new, v_new, score_mod, capacity,
            bool(is_causal), window_left, window_right, scale, sigmoid_bias, accurate,
            bool(trust_lengths))


def _check_attention_tensor(name, tensor, dtype):
    """A [batch, seq, heads, head_dim] tensor of `dtype` (None: any supported one); returns its
    shape."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != 4:
        raise ValueError(f"{name} must be 4-D, got shape {tuple(tensor.shape)}")
    if tensor.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"{name} has dtype {tensor.dtype}; sigattn supports torch.bfloat16 and "
                        f"torch.float16 (cast with .to(torch.bfloat16))")
    if dtype is not None and tensor.dtype != dtype:
        raise TypeError(f"{name} has dtype {tensor.dtype}, q has {dtype}: they must match")
    return tuple(tensor.shape)


# Workspace bytes by the call's sizes and options: the split count the library chooses for them
# does not change within a process unless tuning results do, and a workspace too small for a
# newer choice only lowers the split count.
_workspace_bytes = {}


def _forward_impl(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  cache_seqlens: torch.Tensor, block_table: Optional[torch.Tensor],
                  k_new: Optional[torch.Tensor], v_new: Optional[torch.Tensor],
                  score_mod: Optional[torch.Tensor], capacity: int, causal: bool,
                  window_left: int, window_right: int, scale: Optional[float],
                  bias: Optional[float], accurate: bool, trust_lengths: bool) -> torch.Tensor:
    """The C call; arguments as _checked returns them."""
    abi = _ops._abi()
    out = q.new_empty(q.shape)
    args = kvcache_args(abi.kvcache_defaults, out, q, k_cache, v_cache, cache_seqlens, block_table,
                        k_new, v_new, score_mod, capacity, causal, window_left, window_right,
                        scale, bias, accurate, trust_lengths)
    device = q.get_device()
    workspace = _workspace(args, _workspace_size(abi, device, args), q.device)
    status = _ops._run_on_device(device, abi.forward_with_kvcache, args)
    if status != 0:
        _library.check(status, "sigattn_forward_with_kvcache")
    del workspace
    return out


def _workspace_size(abi, device, args):
    """The workspace bytes of a call, asked once per sizes and options (see _workspace_bytes)."""
    key = (device, args.dtype, args.batch, args.seqlen_q, args.heads_q, args.head_dim,
           args.heads_kv, args.max_cache_len, args.max_blocks, args.block_size,
           bool(args.block_table), args.causal, args.window_left >= 0 or args.window_right >= 0,
           bool(args.score_mod), args.sigmoid)
    if key not in _workspace_bytes:
        _workspace_bytes[key] = _query_workspace_bytes(abi, device, args)
    return _workspace_bytes[key]


def _workspace(args, size, device):
    """A workspace of `size` bytes for the call's split partial outputs, set in args; torch's
    allocator serves it, so CUDA graphs capture it. None when the call runs unsplit."""
    if size == 0:
        return None
    workspace = torch.empty(size, dtype=torch.uint8, device=device)
    args.workspace, args.workspace_bytes = workspace.data_ptr(), size
    return workspace


def kvcache_args(defaults, out, q, k_cache, v_cache, cache_seqlens, block_table, k_new, v_new,
                 score_mod, capacity, causal, window_left, window_right, scale, bias, accurate,
                 trust_lengths):
    """The sigattn_kvcache_args of a checked call writing `out`, from the bytes that
    sigattn_kvcache_args_init wrote (no workspace)."""
    args = _library.KvCacheArgs.from_buffer_copy(defaults)
    args.dtype = _ops._DTYPES[q.dtype]
    args.batch, args.seqlen_q, args.heads_q, args.head_dim = q.shape
    args.heads_kv = k_cache.shape[2]
    args.q = _ops._tensor_ref(q, False)
    args.out = _ops._tensor_ref(out, False)
    args.k_cache = _ops._tensor_ref(k_cache, False)
    args.v_cache = _ops._tensor_ref(v_cache, False)
    if block_table is None:
        args.max_cache_len = capacity
    else:
        args.block_table = block_table.data_ptr()
        args.max_blocks = block_table.shape[1]
        args.block_table_batch_stride = block_table.stride(0)
        args.num_blocks, args.block_size = k_cache.shape[0], k_cache.shape[1]
    args.cache_seqlens = cache_seqlens.data_ptr()
    if k_new is not None and k_new.shape[1] > 0:
        args.k_new = _ops._tensor_ref(k_new, False)
        args.v_new = _ops._tensor_ref(v_new, False)
        args.seqlen_new = k_new.shape[1]
    _ops._fill_options(args, score_mod, capacity, causal, window_left, window_right, scale, bias,
                       accurate, trust_lengths)
    return args


def _query_workspace_bytes(abi, device, args):
    size = ctypes.c_size_t()
    status = _ops._run_on_device(
        device, lambda call_args, stream: abi.kvcache_workspace_bytes(call_args,
                                                                       ctypes.byref(size)), args)
    if status != 0:
        _library.check(status, "sigattn_kvcache_workspace_bytes")
    return size.value


if _ops.REGISTERED_AS_TORCH_OP:
    # The traced path (torch.compile, torch.export, fake tensors): the appends write k_cache and
    # v_cache in place, which the op declares so that the tracer orders the calls around them.
    forward_with_kvcache_op = torch.library.custom_op(
        "sigattn::forward_with_kvcache", _forward_impl, mutates_args=("k_cache", "v_cache"))

    @forward_with_kvcache_op.register_fake
    def _forward_fake(q, *options):
        return q.new_empty(q.shape)

    def _attention_with_kvcache(*inputs):
        """Traced calls go through sigattn::forward_with_kvcache so that the tracer sees the op;
        eager calls skip its dispatch."""
        if _ops.traced(inputs[0]):
            return forward_with_kvcache_op(*inputs)
        return _forward_impl(*inputs)

else:
    _attention_with_kvcache = _forward_impl
