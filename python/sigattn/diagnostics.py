"""Seeing what sigattn does: the level of the library's messages on stderr (also set by
$SIGATTN_LOG), and explain() and explain_with_kvcache(), which say which kernel and tile a call
would run and why, without compiling or launching anything.
"""

import ctypes
import numbers

import torch

from . import _library, _ops, attention, kvcache


def set_log_level(level):
    """How much the library writes to stderr, for this process: "off", "error", "warn" (the
    default), "info" (also one line per new kernel variant: its tile, where the tile came from and
    where its binary came from) or "debug" (also each compilation); or the C value 0 to 4."""
    if isinstance(level, str):
        if level.lower() not in _library.LOG_LEVELS:
            raise ValueError(f"log level {level!r} must be one of {_library.LOG_LEVELS}")
        level = _library.LOG_LEVELS.index(level.lower())
    elif isinstance(level, bool) or not isinstance(level, numbers.Integral):
        raise TypeError(f"log level must be a name or an int, got {type(level).__name__}")
    _library.check(_library.library().sigattn_set_log_level(int(level)), "sigattn_set_log_level")


def get_log_level():
    """The current level's name, e.g. "warn"."""
    return _library.LOG_LEVELS[_library.library().sigattn_get_log_level()]


def explain(query, key, value, is_causal=False, scale=None, sigmoid_bias=None, score_mod=None, *,
            window=None, seq_lens_q=None, seq_lens_k=None, sigmoid="fast", trust_lengths=False,
            deterministic=None, arch=None, device_name=None, sm_count=0):
    """Which kernel sigmoid_attention(query, key, value, ...) would run, with the same arguments,
    as a dict: "variant" (the kernel's canonical name, tile included), "tile", "served_by" (the
    level of the tuning lookup that chose the tile: "user_db", "shipped_db", "nearest_bucket" or
    "heuristic") and "reason". Nothing is compiled or launched.

    Without `arch` the tensors must be CUDA tensors and the choice is that of their GPU. With
    `arch` (one `sigattn compile --arch` accepts: "sm_80", "sm_86", "sm_87", "sm_89", "sm_90",
    "sm_90a", the Blackwell "sm_100a", "sm_103a", "sm_110a", "sm_120a", "sm_121a" and their
    forms without "a") the choice is that of a device of this architecture, named `device_name`
    with `sm_count` SMs (these select tuning results of exactly that device); then no GPU is
    needed and the tensors may be on any device.
    """
    arguments = attention._checked(*attention._dense(query, key, value, seq_lens_q, seq_lens_k),
                                   is_causal, scale, sigmoid_bias, score_mod, window, sigmoid,
                                   trust_lengths, deterministic)
    lib = _library.library()
    args = _library.ForwardArgs()
    lib.sigattn_forward_args_init(ctypes.byref(args))
    # Nothing is read: lengths are trusted so that no CUDA query is made, and out only needs its
    # layout, so the query's address stands in for it.
    _ops._fill(args, *arguments[:-2], True)
    args.out = _ops._tensor_ref(torch.empty(query.shape, dtype=query.dtype, device="meta"), False)
    args.out.data = query.data_ptr()
    return _explained(lib, "sigattn_explain_forward", args, query, "query", arch, device_name,
                      sm_count)


def explain_with_kvcache(q, k_cache, v_cache, cache_seqlens, *, k_new=None, v_new=None,
                         block_table=None, is_causal=True, window=None, scale=None,
                         sigmoid_bias=None, score_mod=None, sigmoid="fast", arch=None,
                         device_name=None, sm_count=0):
    """Which decode kernel sigmoid_attention_with_kvcache(q, k_cache, ...) would run, with the
    same arguments, as explain() answers for sigmoid_attention: the variant, its tile with the
    split count over the cache ("….splitsN"), where the tile came from and why. Nothing is
    compiled, launched or appended.

    Without `arch` the tensors must be CUDA tensors and the choice is that of their GPU. With
    `arch` the choice is that of a described device, which must then give its `sm_count` (the
    split count depends on it); no GPU is needed.
    """
    arguments = kvcache._checked(q, k_cache, v_cache, cache_seqlens, k_new, v_new, block_table,
                                 is_causal, window, scale, sigmoid_bias, score_mod, sigmoid, True)
    lib = _library.library()
    defaults = _library.KvCacheArgs()
    lib.sigattn_kvcache_args_init(ctypes.byref(defaults))
    # Nothing is read or written: q's address stands in for the output, which has q's shape.
    out = torch.empty(q.shape, dtype=q.dtype, device="meta")
    args = kvcache.kvcache_args(bytes(defaults), out, *arguments)
    args.out.data = q.data_ptr()
    return _explained(lib, "sigattn_explain_forward_with_kvcache", args, q, "q", arch,
                      device_name, sm_count)


def _explained(lib, function, args, tensor, name, arch, device_name, sm_count):
    """The dispatch `function` (or its described-device form `function`_on) answers, as a dict."""
    dispatch = _library.Dispatch()
    if arch is None:
        if not tensor.is_cuda:
            raise ValueError(f"{name} is on {tensor.device}: explain without arch explains the "
                             f"GPU of CUDA tensors; pass arch (e.g. arch=\"sm_90a\") to explain "
                             f"a call on a described device")
        with torch.cuda.device(tensor.device):
            status = getattr(lib, function)(ctypes.byref(args), ctypes.byref(dispatch))
        _library.check(status, function)
    else:
        function += "_on"
        device = _library.Device(str(arch).encode(), (device_name or "").encode(), int(sm_count))
        status = getattr(lib, function)(ctypes.byref(args), ctypes.byref(device),
                                        ctypes.byref(dispatch))
        _library.check(status, function)
    return {field: getattr(dispatch, field).decode() for field, _ in _library.Dispatch._fields_}
