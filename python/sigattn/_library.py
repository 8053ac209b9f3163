"""ctypes binding of libsigattn's C ABI (include/sigattn/sigattn.h): the argument structures field
for field, the search for the shared library, and C status codes turned into SigattnError.

Imports no torch, so the structures can be checked against the C header on any machine.
"""

import ctypes
import os
import threading

# sigattn_status, sigattn_dtype and sigattn_sigmoid (C enums: the size of an int).
STATUS_NAMES = {
    0: "SIGATTN_OK",
    1: "SIGATTN_INVALID_ARGUMENT",
    2: "SIGATTN_UNSUPPORTED",
    3: "SIGATTN_DRIVER_ERROR",
    4: "SIGATTN_COMPILE_ERROR",
    5: "SIGATTN_NOT_AVAILABLE",
    6: "SIGATTN_INTERNAL_ERROR",
}
DTYPE_BF16 = 0
DTYPE_FP16 = 1
SIGMOID_FAST = 0
SIGMOID_ACCURATE = 1
# sigattn_log_level: the names, each at its C value.
LOG_LEVELS = ("off", "error", "warn", "info", "debug")

LIBRARY_VARIABLE = "SIGATTN_LIBRARY"


class SigattnError(RuntimeError):
    """A failure of the sigattn runtime, or a library that cannot be found or loaded.

    `status` is the C status name (e.g. "SIGATTN_INVALID_ARGUMENT"), or None when the failure
    happened before the library was called.
    """

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class Tensor(ctypes.Structure):
    """sigattn_tensor: a [batch, seq, heads, head_dim] view, strides in elements."""

    _fields_ = [
        ("data", ctypes.c_void_p),
        ("batch_stride", ctypes.c_int64),
        ("seq_stride", ctypes.c_int64),
        ("head_stride", ctypes.c_int64),
    ]


class ForwardArgs(ctypes.Structure):
    """sigattn_forward_args."""

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
    """sigattn_backward_args."""

    _fields_ = [
        ("inputs", ForwardArgs),
        ("grad_out", Tensor),
        ("grad_q", Tensor),
        ("grad_k", Tensor),
        ("grad_v", Tensor),
        ("deterministic", ctypes.c_int32),
    ]


class KvCacheArgs(ctypes.Structure):
    """sigattn_kvcache_args."""

    _fields_ = [
        ("dtype", ctypes.c_int),
        ("batch", ctypes.c_int32),
        ("heads_q", ctypes.c_int32),
        ("heads_kv", ctypes.c_int32),
        ("head_dim", ctypes.c_int32),
        ("seqlen_q", ctypes.c_int32),
        ("q", Tensor),
        ("out", Tensor),
        ("k_cache", Tensor),
        ("v_cache", Tensor),
        ("max_cache_len", ctypes.c_int32),
        ("block_table", ctypes.c_void_p),
        ("block_table_batch_stride", ctypes.c_int64),
        ("max_blocks", ctypes.c_int32),
        ("num_blocks", ctypes.c_int32),
        ("block_size", ctypes.c_int32),
        ("cache_seqlens", ctypes.c_void_p),
        ("k_new", Tensor),
        ("v_new", Tensor),
        ("seqlen_new", ctypes.c_int32),
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
        ("workspace", ctypes.c_void_p),
        ("workspace_bytes", ctypes.c_size_t),
        ("trust_lengths", ctypes.c_int32),
    ]


class Dispatch(ctypes.Structure):
    """sigattn_dispatch: the library's strings, valid until its next explain call on the thread."""

    _fields_ = [
        ("variant", ctypes.c_char_p),
        ("tile", ctypes.c_char_p),
        ("served_by", ctypes.c_char_p),
        ("reason", ctypes.c_char_p),
    ]


class Device(ctypes.Structure):
    """sigattn_device: a device described by its arch, name and SM count."""

    _fields_ = [
        ("arch", ctypes.c_char_p),
        ("name", ctypes.c_char_p),
        ("sm_count", ctypes.c_int32),
    ]


def _declare(lib):
    lib.sigattn_forward_args_init.argtypes = [ctypes.POINTER(ForwardArgs)]
    lib.sigattn_forward_args_init.restype = None
    lib.sigattn_forward.argtypes = [ctypes.POINTER(ForwardArgs), ctypes.c_void_p]
    lib.sigattn_forward.restype = ctypes.c_int
    lib.sigattn_backward_args_init.argtypes = [ctypes.POINTER(BackwardArgs)]
    lib.sigattn_backward_args_init.restype = None
    lib.sigattn_backward.argtypes = [ctypes.POINTER(BackwardArgs), ctypes.c_void_p]
    lib.sigattn_backward.restype = ctypes.c_int
    lib.sigattn_kvcache_args_init.argtypes = [ctypes.POINTER(KvCacheArgs)]
    lib.sigattn_kvcache_args_init.restype = None
    lib.sigattn_forward_with_kvcache.argtypes = [ctypes.POINTER(KvCacheArgs), ctypes.c_void_p]
    lib.sigattn_forward_with_kvcache.restype = ctypes.c_int
    lib.sigattn_kvcache_workspace_bytes.argtypes = [ctypes.POINTER(KvCacheArgs),
                                                    ctypes.POINTER(ctypes.c_size_t)]
    lib.sigattn_kvcache_workspace_bytes.restype = ctypes.c_int
    lib.sigattn_set_database_path.argtypes = [ctypes.c_char_p]
    lib.sigattn_set_database_path.restype = ctypes.c_int
    lib.sigattn_set_online_tuning.argtypes = [ctypes.c_int]
    lib.sigattn_set_online_tuning.restype = ctypes.c_int
    lib.sigattn_explain_forward.argtypes = [ctypes.POINTER(ForwardArgs), ctypes.POINTER(Dispatch)]
    lib.sigattn_explain_forward.restype = ctypes.c_int
    lib.sigattn_explain_forward_on.argtypes = [ctypes.POINTER(ForwardArgs), ctypes.POINTER(Device),
                                               ctypes.POINTER(Dispatch)]
    lib.sigattn_explain_forward_on.restype = ctypes.c_int
    lib.sigattn_explain_forward_with_kvcache.argtypes = [ctypes.POINTER(KvCacheArgs),
                                                         ctypes.POINTER(Dispatch)]
    lib.sigattn_explain_forward_with_kvcache.restype = ctypes.c_int
    lib.sigattn_explain_forward_with_kvcache_on.argtypes = [
        ctypes.POINTER(KvCacheArgs), ctypes.POINTER(Device), ctypes.POINTER(Dispatch)]
    lib.sigattn_explain_forward_with_kvcache_on.restype = ctypes.c_int
    lib.sigattn_set_log_level.argtypes = [ctypes.c_int]
    lib.sigattn_set_log_level.restype = ctypes.c_int
    lib.sigattn_get_log_level.argtypes = []
    lib.sigattn_get_log_level.restype = ctypes.c_int
    lib.sigattn_last_error.argtypes = []
    lib.sigattn_last_error.restype = ctypes.c_char_p
    lib.sigattn_version.argtypes = []
    lib.sigattn_version.restype = ctypes.c_char_p
    return lib


def candidate_paths():
    """Where the library is looked for, in order: $SIGATTN_LIBRARY alone when it is set, else the
    copy installed inside this package, then the system loader's search path."""
    explicit = os.environ.get(LIBRARY_VARIABLE)
    if explicit:
        return [explicit]
    package_dir = os.path.dirname(os.path.abspath(__file__))
    return [
        os.path.join(package_dir, "lib", "libsigattn.so"),
        os.path.join(package_dir, "libsigattn.so"),
        "libsigattn.so.0",
    ]


_lock = threading.Lock()
_loaded = None  # (ctypes.CDLL, the path it was opened from)


def _load():
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _open_first(candidate_paths())
        return _loaded


def library():
    """The loaded libsigattn (opened on first use), or SigattnError saying where it looked."""
    return _load()[0]


def library_path():
    """The path the library was loaded from."""
    return _load()[1]


def _open_first(paths):
    failures = []
    for path in paths:
        if os.sep in path and not os.path.exists(path):
            failures.append(f"{path}: no such file")
            continue
        try:
            lib = _declare(ctypes.CDLL(path))
        except OSError as error:
            failures.append(f"{path}: {error}")
            continue
        except AttributeError as error:
            failures.append(f"{path}: not libsigattn ({error})")
            continue
        return lib, path
    raise SigattnError(
        "cannot load libsigattn.so; tried:\n  " + "\n  ".join(failures) + "\n"
        f"Install the package with `pip install ./python` from the sigattn repository (it builds "
        f"the library), or set {LIBRARY_VARIABLE} to the path of an existing libsigattn.so.")


def check(status, call):
    """Raises SigattnError with sigattn_last_error() when `status` is not SIGATTN_OK."""
    if status != 0:
        message = library().sigattn_last_error()
        text = message.decode(errors="replace") if message else "no message"
        name = STATUS_NAMES.get(status, f"status {status}")
        raise SigattnError(f"{call} failed ({name}): {text}", status=name)


def version():
    """The version of the loaded library, e.g. "0.1.0"."""
    return library().sigattn_version().decode()
