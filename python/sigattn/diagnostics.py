"""Seeing what sigattn does: the level of the library's messages on stderr (also set by
$SIGATTN_LOG) and explain(), which says which kernel and tile a call would run and why, without
compiling or launching anything.
"""

import ctypes
import numbers

import torch

from . import _library, _ops, attention


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
    dispatch = _library.Dispatch()
    if arch is None:
        if not query.is_cuda:
            raise ValueError(f"query is on {query.device}: explain without arch explains the "
                             f"GPU of CUDA tensors; pass arch (e.g. arch=\"sm_90a\") to explain "
                             f"a call on a described device")
        with torch.cuda.device(query.device):
            status = lib.sigattn_explain_forward(ctypes.byref(args), ctypes.byref(dispatch))
        _library.check(status, "sigattn_explain_forward")
    else:
        device = _library.Device(str(arch).encode(), (device_name or "").encode(), int(sm_count))
        status = lib.sigattn_explain_forward_on(ctypes.byref(args), ctypes.byref(device),
                                                ctypes.byref(dispatch))
        _library.check(status, "sigattn_explain_forward_on")
    return {field: getattr(dispatch, field).decode() for field, _ in _library.Dispatch._fields_}
