"""CPU tests of the sigattn Python package (no GPU needed): it imports, rejects bad input with
clear errors before anything runs, maps C ABI failures to SigattnError, drives `sigattn tune` with
the right command line, and its ctypes structures match include/sigattn/sigattn.h field for field.
Run: python3 -m unittest discover -s python/tests (with the package installed, or
PYTHONPATH=python and SIGATTN_LIBRARY=build/libsigattn.so).
"""

import contextlib
import ctypes
import ctypes.util
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

import torch

import sigattn
from sigattn import _library, _ops, attention, kvcache, tuning

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEADER = os.path.join(REPO, "include", "sigattn", "sigattn.h")


def read_text(path):
    with open(path) as file:
        return file.read()


def library_or_none():
    try:
        return _library.library()
    except sigattn.SigattnError:
        return None


def bthd(batch=2, seq=16, heads=4, dim=64, dtype=torch.bfloat16):
    return torch.randn(batch, seq, heads, dim).to(dtype)


class ImportAndDeviceTest(unittest.TestCase):
    def test_imports_without_a_gpu_and_says_how_it_registered(self):
        version = tuple(int(x) for x in torch.__version__.split(".")[:2])
        self.assertEqual(sigattn.REGISTERED_AS_TORCH_OP, version >= (2, 4))
        self.assertTrue(callable(sigattn.sigmoid_attention))

    def test_cpu_tensors_are_refused_with_a_clear_error(self):
        q, k, v = bthd(), bthd(), bthd()
        with self.assertRaisesRegex(ValueError, r"query is on cpu: sigattn runs on CUDA GPUs"):
            sigattn.sigmoid_attention(q, k, v)
        if not torch.cuda.is_available():
            with self.assertRaisesRegex(ValueError, r"torch.cuda.is_available\(\) is False"):
                sigattn.sigmoid_attention(q, k, v, is_causal=True)

    def test_cpu_lengths_are_refused(self):
        q = bthd()
        lens = torch.tensor([3, 16], dtype=torch.int32)
        with self.assertRaisesRegex(ValueError, "CUDA"):
            sigattn.sigmoid_attention_padded(q, q, q, seq_lens_k=lens, seq_lens_q=lens)

    def test_cpu_varlen_is_refused(self):
        q = torch.randn(40, 4, 64).to(torch.float16)
        cu = torch.tensor([0, 15, 40], dtype=torch.int32)
        with self.assertRaisesRegex(ValueError, "q is on cpu"):
            sigattn.sigmoid_attention_varlen(q, q, q, cu, cu, 25, 25)


class ValidationTest(unittest.TestCase):
    """Every check runs before the device check, so CPU tensors reach each of them."""

    def assert_rejected(self, error, pattern, *args, **kwargs):
        with self.assertRaisesRegex(error, pattern):
            sigattn.sigmoid_attention(*args, **kwargs)

    def test_dtype(self):
        q = bthd(dtype=torch.float32)
        self.assert_rejected(TypeError, r"query has dtype torch.float32; sigattn supports", q, q, q)
        self.assert_rejected(TypeError, "one dtype", bthd(), bthd(dtype=torch.float16), bthd())

    def test_not_a_tensor(self):
        self.assert_rejected(TypeError, "key must be a torch.Tensor", bthd(), [1.0], bthd())

    def test_rank(self):
        self.assert_rejected(ValueError, r"query must be 4-D \[batch, seq, heads, head_dim\]",
                             torch.randn(16, 4, 64).bfloat16(), bthd(), bthd())

    def test_mismatched_shapes(self):
        self.assert_rejected(ValueError, "batch size mismatch", bthd(batch=3), bthd(), bthd())
        self.assert_rejected(ValueError, "head dim mismatch", bthd(dim=32), bthd(), bthd())
        self.assert_rejected(ValueError, "key and value must have the same shape", bthd(),
                             bthd(seq=8), bthd())

    def test_gqa_head_counts(self):
        self.assert_rejected(ValueError, r"query has 6 heads, which is not a multiple of the 4",
                             bthd(heads=6), bthd(heads=4), bthd(heads=4))
        self.assert_rejected(ValueError, "is on cpu", bthd(heads=8), bthd(heads=2),
                             bthd(heads=2))

    def test_head_dim(self):
        for dim in (12, 264):
            self.assert_rejected(ValueError, f"head_dim = {dim} is not supported", bthd(dim=dim),
                                 bthd(dim=dim), bthd(dim=dim))

    def test_head_dim_not_contiguous(self):
        q = torch.randn(2, 16, 64, 4).bfloat16().transpose(2, 3)
        self.assert_rejected(ValueError, "query has head-dim stride 4: the head dimension must be "
                             "contiguous", q, bthd(), bthd())

    def test_odd_strides(self):
        q = torch.randn(2, 16, 4, 65).bfloat16()[..., :64]
        self.assert_rejected(ValueError, r"query.stride\(1\) = 260 must be a non-negative multiple "
                             "of 8", q, bthd(), bthd())

    def test_bhtd_view_passes_the_layout_checks(self):
        q = torch.randn(2, 4, 16, 64).bfloat16().transpose(1, 2)
        self.assertFalse(q.is_contiguous())
        self.assert_rejected(ValueError, "is on cpu", q, q, q)

    def test_options(self):
        q = bthd()
        self.assert_rejected(ValueError, "window must be None or a", q, q, q, window=4)
        self.assert_rejected(ValueError, "window left = -2", q, q, q, window=(-2, 0))
        self.assert_rejected(ValueError, r"scale = -1.0 must be finite and > 0", q, q, q,
                             scale=-1.0)
        self.assert_rejected(ValueError, "sigmoid_bias = inf must be finite", q, q, q,
                             sigmoid_bias=float("inf"))
        self.assert_rejected(ValueError, "sigmoid = 'exact' must be one of", q, q, q,
                             sigmoid="exact")
        self.assert_rejected(TypeError, "deterministic must be None, True or False", q, q, q,
                             deterministic=1)

    def test_lengths_and_score_mod(self):
        q = bthd()
        self.assert_rejected(ValueError, r"seq_lens_k must have shape \(2,\)", q, q, q,
                             seq_lens_k=torch.tensor([1, 2, 3], dtype=torch.int32))
        self.assert_rejected(TypeError, "seq_lens_q must be an integer tensor", q, q, q,
                             seq_lens_q=torch.tensor([1.0, 2.0]))
        self.assert_rejected(ValueError, r"score_mod must have shape \(2, 16\)", q, q, q,
                             score_mod=torch.randn(2, 15))
        self.assert_rejected(ValueError, r"max_seqlen_q = 0 is out of range", bthd(seq=0), q, q)

    def test_varlen_arguments(self):
        q = torch.randn(40, 4, 64).bfloat16()
        cu = torch.tensor([0, 15, 40], dtype=torch.int32)
        with self.assertRaisesRegex(ValueError, "cu_seqlens_q and cu_seqlens_k are both required"):
            sigattn.sigmoid_attention_varlen(q, q, q, cu, None, 25, 25)
        with self.assertRaisesRegex(ValueError, r"cu_seqlens_k must have shape \(3,\)"):
            sigattn.sigmoid_attention_varlen(q, q, q, cu, cu[:2], 25, 25)
        with self.assertRaisesRegex(TypeError, "max_seqlen_k must be an int"):
            sigattn.sigmoid_attention_varlen(q, q, q, cu, cu, 25, 25.0)
        with self.assertRaisesRegex(ValueError, r"q must be 3-D \[total_tokens, heads, head_dim\]"):
            sigattn.sigmoid_attention_varlen(bthd(), bthd(), bthd(), cu, cu, 25, 25)


class PackedTensorTest(unittest.TestCase):
    """A packed tensor that holds one token while max_seqlen is larger is a legal call."""

    def test_one_token_gets_a_whole_row_stride(self):
        strides = lambda ref: (ref.batch_stride, ref.seq_stride, ref.head_stride)
        self.assertEqual(strides(_ops._tensor_ref(torch.empty(1, 4, 64), True)), (0, 256, 64))
        self.assertEqual(strides(_ops._tensor_ref(torch.empty(1, 1, 64), True)), (0, 64, 0))
        padded_heads = torch.empty(1, 4, 128)[:, :, :64]
        self.assertEqual(strides(_ops._tensor_ref(padded_heads, True)), (0, 512, 128))
        self.assertEqual(strides(_ops._tensor_ref(torch.empty(3, 4, 64), True)), (0, 256, 64))
        # Dense tensors keep 0 for their extent-1 dimensions.
        self.assertEqual(strides(_ops._tensor_ref(torch.empty(1, 1, 4, 64), False)), (0, 0, 64))

    def test_the_library_accepts_one_token_below_a_longer_max_seqlen(self):
        lib = library_or_none()
        if lib is None:
            self.skipTest("libsigattn.so not found (set SIGATTN_LIBRARY)")
        token = torch.randn(1, 4, 64).bfloat16()
        cu_seqlens = torch.tensor([0, 1, 1], dtype=torch.int32)
        args = _library.ForwardArgs()
        lib.sigattn_forward_args_init(ctypes.byref(args))
        args.batch, args.heads_q, args.heads_kv, args.head_dim = 2, 4, 4, 64
        args.max_seqlen_q = args.max_seqlen_k = 127
        args.q = args.k = args.v = args.out = _ops._tensor_ref(token, True)
        args.cu_seqlens_q = args.cu_seqlens_k = cu_seqlens.data_ptr()
        for seq_stride in (256, 0):  # the binding's stride, and 0 as any C caller may pass
            args.out.seq_stride = seq_stride
            status = lib.sigattn_forward(ctypes.byref(args), None)
            # Host memory stands in for the tensors: the call fails later, without a GPU or at
            # the device-pointer check, never at the layout checks.
            with self.assertRaises(sigattn.SigattnError) as caught:
                _library.check(status, "sigattn_forward")
            self.assertNotIn("overlap", str(caught.exception))


class StubbedLibrary:
    """Stands in for libsigattn and the CUDA queries so that the eager paths run on CPU tensors:
    each C call's argument structure is recorded and the call succeeds without writing."""

    STREAM = 1234

    def __init__(self):
        self.calls = []
        forward_args = _library.ForwardArgs(window_left=-1, window_right=-1)
        backward_args = _library.BackwardArgs(inputs=forward_args, deterministic=1)
        self.forward_defaults = bytes(forward_args)
        self.backward_defaults = bytes(backward_args)
        self.kvcache_defaults = bytes(_library.KvCacheArgs(causal=1, window_left=-1,
                                                           window_right=-1))
        self.workspace = 0
        self.patches = [
            mock.patch.object(kvcache, "_check_devices", lambda names, tensors: None),
            mock.patch.object(kvcache, "_workspace_bytes", {}),
            mock.patch.object(_ops, "_c_abi", self),
            mock.patch.object(_ops, "_current_device", lambda: -1),
            mock.patch.object(_ops, "_current_raw_stream", lambda index: self.STREAM),
            mock.patch.object(_ops, "_is_stream_capturing", lambda: False),
            mock.patch.object(attention, "_check_devices", lambda names, tensors: None),
        ]

    def forward(self, args, stream):
        self.calls.append(("forward", _library.ForwardArgs.from_buffer_copy(args), stream))
        return 0

    def backward(self, args, stream):
        self.calls.append(("backward", _library.BackwardArgs.from_buffer_copy(args), stream))
        return 0

    def forward_with_kvcache(self, args, stream):
        self.calls.append(("kvcache", _library.KvCacheArgs.from_buffer_copy(args), stream))
        return 0

    def kvcache_workspace_bytes(self, args, size):
        self.calls.append(("workspace", _library.KvCacheArgs.from_buffer_copy(args), None))
        ctypes.cast(size, ctypes.POINTER(ctypes.c_size_t))[0] = self.workspace
        return 0

    def __enter__(self):
        for patch in self.patches:
            patch.start()
        return self

    def __exit__(self, *exc):
        for patch in reversed(self.patches):
            patch.stop()
        return False


class EagerPathTest(unittest.TestCase):
    """Eager calls reach the C ABI without torch.library dispatch: directly when no gradient is
    needed, through the autograd.Function otherwise (the library stubbed)."""

    def test_no_grad_call_is_the_c_call_alone(self):
        q = torch.randn(2, 4, 16, 64).bfloat16().transpose(1, 2)  # BHTD storage
        k, v = bthd(heads=2), bthd(heads=2)
        for requires_grad in (False, True):
            leaves = [x.detach().requires_grad_(requires_grad) for x in (q, k, v)]
            with StubbedLibrary() as library, torch.no_grad() if requires_grad else \
                    contextlib.nullcontext():
                out = sigattn.sigmoid_attention(*leaves, is_causal=True, window=(4, -1),
                                                scale=0.5)
            self.assertIsNone(out.grad_fn)
            self.assertEqual([call[0] for call in library.calls], ["forward"])
            _, args, stream = library.calls[0]
            self.assertEqual(stream, StubbedLibrary.STREAM)
            self.assertEqual((args.dtype, args.batch, args.heads_q, args.heads_kv, args.head_dim),
                             (_library.DTYPE_BF16, 2, 4, 2, 64))
            self.assertEqual((args.q.batch_stride, args.q.seq_stride, args.q.head_stride),
                             (4 * 16 * 64, 64, 16 * 64))
            self.assertEqual((args.k.data, args.out.data), (k.data_ptr(), out.data_ptr()))
            self.assertEqual((args.causal, args.window_left, args.window_right), (1, 4, -1))
            self.assertEqual((args.has_scale, args.scale, args.has_bias), (1, 0.5, 0))
            self.assertEqual((args.seq_lens_q, args.trust_lengths), (None, 0))

    def test_extent_one_dimensions_get_stride_zero(self):
        q = torch.randn(1, 8, 1, 64).bfloat16()
        with StubbedLibrary() as library:
            sigattn.sigmoid_attention(q, q, q)
        args = library.calls[0][1]
        self.assertEqual((args.q.batch_stride, args.q.seq_stride, args.q.head_stride), (0, 64, 0))

    def test_default_split_follows_torch_deterministic_algorithms(self):
        q, k, v = (bthd().requires_grad_(True) for _ in range(3))
        enabled = torch.are_deterministic_algorithms_enabled()
        splits = []
        try:
            for deterministic in (False, True):
                torch.use_deterministic_algorithms(deterministic)
                with StubbedLibrary() as library:
                    sigattn.sigmoid_attention(q, k, v).backward(torch.randn_like(q))
                splits.append(library.calls[1][1].deterministic)
        finally:
            torch.use_deterministic_algorithms(enabled)
        self.assertEqual(splits, [0, 1])

    def test_autograd_path_saves_the_inputs_for_the_backward(self):
        q, k, v = (bthd(dtype=torch.float16).requires_grad_(True) for _ in range(3))
        lens = torch.tensor([5, 16])
        with StubbedLibrary() as library:
            out = sigattn.sigmoid_attention(q, k, v, seq_lens_k=lens, sigmoid_bias=-2.0,
                                            sigmoid="accurate", deterministic=False)
            self.assertIn("_Attention", type(out.grad_fn).__name__)
            grad_out = torch.randn_like(out)
            out.backward(grad_out)
        self.assertEqual([call[0] for call in library.calls], ["forward", "backward"])
        forward, backward = library.calls[0][1], library.calls[1][1]
        self.assertEqual(bytes(backward.inputs.q), bytes(forward.q))
        self.assertEqual((backward.inputs.has_bias, backward.inputs.bias), (1, -2.0))
        self.assertEqual(backward.inputs.sigmoid, _library.SIGMOID_ACCURATE)
        self.assertNotEqual(backward.inputs.seq_lens_k, None)
        self.assertEqual(backward.deterministic, 0)
        self.assertEqual(backward.grad_out.data, grad_out.data_ptr())
        for leaf, field in ((q, backward.grad_q), (k, backward.grad_k), (v, backward.grad_v)):
            self.assertEqual(leaf.grad.shape, leaf.shape)
            self.assertEqual(field.data, leaf.grad.data_ptr())

    def test_eager_calls_import_no_compiler(self):
        """torch.library's first call imports torch._dynamo and sympy (seconds); eager calls must
        not make it."""
        program = "\n".join([
            "import sys",
            f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})",
            "import torch",
            "from test_cpu import StubbedLibrary, bthd",
            "import sigattn",
            "q = bthd().requires_grad_(True)",
            "with StubbedLibrary():",
            "    sigattn.sigmoid_attention(q.detach(), q.detach(), q.detach())",
            "    sigattn.sigmoid_attention(q, q, q)",
            "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))",
        ])
        result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "[]")


def cache(batch=2, length=32, heads=2, dim=64, dtype=torch.bfloat16):
    return torch.randn(batch, length, heads, dim).to(dtype)


class KvCacheValidationTest(unittest.TestCase):
    """Every check of sigmoid_attention_with_kvcache runs before the device check, so CPU tensors
    reach each of them."""

    def assert_rejected(self, error, pattern, q, k_cache, v_cache, cache_seqlens, **kwargs):
        with self.assertRaisesRegex(error, pattern):
            sigattn.sigmoid_attention_with_kvcache(q, k_cache, v_cache, cache_seqlens, **kwargs)

    def setUp(self):
        self.q = bthd(seq=1, heads=8)
        self.k, self.v = cache(), cache()
        self.lens = torch.tensor([3, 7], dtype=torch.int32)

    def test_tensors(self):
        q, k, v, lens = self.q, self.k, self.v, self.lens
        self.assert_rejected(TypeError, "q must be a torch.Tensor", [1.0], k, v, lens)
        self.assert_rejected(ValueError, r"k_cache must be 4-D", q, k[0], v, lens)
        self.assert_rejected(TypeError, r"v_cache has dtype torch.float16, q has torch.bfloat16",
                             q, k, v.half(), lens)
        self.assert_rejected(TypeError, "sigattn supports", q.float(), k, v, lens)
        self.assert_rejected(ValueError, "k_cache and v_cache must have the same shape", q, k,
                             cache(length=16), lens)
        self.assert_rejected(ValueError, "head dim mismatch", bthd(seq=1, heads=8, dim=32), k, v,
                             lens)
        self.assert_rejected(ValueError, "q has 6 heads, which is not a multiple of the 4 heads",
                             bthd(seq=1, heads=6), cache(heads=4), cache(heads=4), lens)
        self.assert_rejected(ValueError, "head_dim = 12 is not supported",
                             bthd(seq=1, dim=12), cache(dim=12), cache(dim=12), lens)
        self.assert_rejected(ValueError, r"k_cache.stride\(1\) = 130 must be a non-negative",
                             q, torch.randn(2, 32, 2, 65).bfloat16()[..., :64], v, lens)
        self.assert_rejected(ValueError, "batch size mismatch: q has 2, the contiguous k_cache",
                             q, cache(batch=3), cache(batch=3), lens)

    def test_lengths_and_block_table(self):
        q, k, v, lens = self.q, self.k, self.v, self.lens
        self.assert_rejected(ValueError, r"cache_seqlens must have shape \(2,\)", q, k, v,
                             torch.tensor([1, 2, 3], dtype=torch.int32))
        self.assert_rejected(TypeError, "cache_seqlens must be an integer tensor", q, k, v,
                             torch.tensor([1.0, 2.0]))
        self.assert_rejected(ValueError, "cache_seqlens is required", q, k, v, None)
        self.assert_rejected(ValueError, r"block_table must be \[batch, max_blocks\]", q, k, v,
                             lens, block_table=torch.zeros(3, 4, dtype=torch.int32))
        self.assert_rejected(TypeError, "block_table must be an integer tensor", q, k, v, lens,
                             block_table=torch.zeros(2, 4))
        # A paged cache may hold any number of blocks: the batch need not match.
        self.assert_rejected(ValueError, "is on cpu", q, cache(batch=9, length=16),
                             cache(batch=9, length=16), lens,
                             block_table=torch.zeros(2, 4, dtype=torch.int64))

    def test_new_tokens_and_options(self):
        q, k, v, lens = self.q, self.k, self.v, self.lens
        new = cache(length=2)
        self.assert_rejected(ValueError, "k_new and v_new must be given together", q, k, v, lens,
                             k_new=new)
        self.assert_rejected(ValueError, r"v_new must have shape \(2, 2, 2, 64\)", q, k, v, lens,
                             k_new=new, v_new=cache(length=2, heads=1))
        self.assert_rejected(ValueError, "seqlen_new = 33 new tokens do not fit a cache of 32",
                             q, k, v, lens, k_new=cache(length=33), v_new=cache(length=33))
        self.assert_rejected(ValueError, r"score_mod must have shape \(2, 32\) = \(batch, cache "
                             r"capacity\)", q, k, v, lens, score_mod=torch.zeros(2, 16))
        self.assert_rejected(ValueError, "window left = -2", q, k, v, lens, window=(-2, 0))
        self.assert_rejected(ValueError, "scale = 0.0 must be finite and > 0", q, k, v, lens,
                             scale=0.0)
        self.assert_rejected(ValueError, "sigmoid_bias = nan must be finite", q, k, v, lens,
                             sigmoid_bias=float("nan"))
        self.assert_rejected(ValueError, "sigmoid = 'exact' must be one of", q, k, v, lens,
                             sigmoid="exact")
        self.assert_rejected(ValueError, "q is on cpu", q, k, v, lens, k_new=new, v_new=new)


class KvCacheCallTest(unittest.TestCase):
    """What sigmoid_attention_with_kvcache passes to the C ABI (the library stubbed)."""

    def test_contiguous_cache_with_new_tokens(self):
        q = bthd(seq=1, heads=8, dtype=torch.float16)
        k, v = cache(dtype=torch.float16), cache(dtype=torch.float16)
        new = cache(length=3, dtype=torch.float16)
        lens = torch.tensor([3, 7])
        with StubbedLibrary() as library:
            library.workspace = 4096
            out = sigattn.sigmoid_attention_with_kvcache(q, k, v, lens, k_new=new, v_new=new,
                                                         window=(8, -1), sigmoid_bias=-3.0,
                                                         sigmoid="accurate")
        self.assertEqual([call[0] for call in library.calls], ["workspace", "kvcache"])
        _, args, stream = library.calls[1]
        self.assertEqual(stream, StubbedLibrary.STREAM)
        self.assertEqual(out.shape, q.shape)
        self.assertEqual((args.dtype, args.batch, args.seqlen_q, args.heads_q, args.heads_kv,
                          args.head_dim), (_library.DTYPE_FP16, 2, 1, 8, 2, 64))
        self.assertEqual((args.max_cache_len, args.block_table, args.seqlen_new), (32, None, 3))
        self.assertEqual((args.k_cache.batch_stride, args.k_cache.seq_stride,
                          args.k_cache.head_stride), (32 * 2 * 64, 2 * 64, 64))
        self.assertEqual((args.q.seq_stride, args.out.data), (0, out.data_ptr()))
        self.assertEqual((args.k_new.data, args.v_new.data), (new.data_ptr(), new.data_ptr()))
        self.assertNotEqual(args.cache_seqlens, None)
        self.assertEqual((args.causal, args.window_left, args.window_right), (1, 8, -1))
        self.assertEqual((args.has_bias, args.bias, args.has_scale), (1, -3.0, 0))
        self.assertEqual(args.sigmoid, _library.SIGMOID_ACCURATE)
        self.assertEqual(args.workspace_bytes, 4096)
        self.assertNotEqual(args.workspace, None)

    def test_repeated_signature_skips_the_checks_but_passes_the_new_tensors(self):
        q = bthd(batch=2, seq=1, heads=4)
        k, v = cache(), cache()
        new = cache(batch=2, length=1)
        with StubbedLibrary() as library, \
                mock.patch.object(kvcache, "_prepared", {}), \
                mock.patch.object(kvcache, "_checked", wraps=kvcache._checked) as checked:
            for _ in range(3):
                q, new = bthd(batch=2, seq=1, heads=4), cache(batch=2, length=1)
                lens = torch.tensor([3, 7], dtype=torch.int32)
                sigattn.sigmoid_attention_with_kvcache(q, k, v, lens, k_new=new, v_new=new)
            self.assertEqual(checked.call_count, 1)
            args = library.calls[-1][1]
            self.assertEqual((args.q.data, args.k_new.data, args.cache_seqlens),
                             (q.data_ptr(), new.data_ptr(), lens.data_ptr()))
            self.assertEqual(args.k_cache.data, k.data_ptr())
            # int64 lengths are converted on every call, so those calls are always checked.
            for _ in range(2):
                lens = torch.tensor([3, 7])
                sigattn.sigmoid_attention_with_kvcache(q, k, v, lens, k_new=new, v_new=new)
                self.assertNotEqual(library.calls[-1][1].cache_seqlens, lens.data_ptr())
            self.assertEqual(checked.call_count, 3)
            # Another option is another signature: checked, and its errors still raised.
            with self.assertRaisesRegex(ValueError, "window must be None or a"):
                sigattn.sigmoid_attention_with_kvcache(q, k, v, lens, window=(1, 2, 3))
            with self.assertRaisesRegex(ValueError, "k_new and v_new must be given together"):
                sigattn.sigmoid_attention_with_kvcache(q, k, v, lens.int(), k_new=new)

    def test_paged_cache_without_new_tokens_needs_no_workspace_when_unsplit(self):
        q = bthd(batch=3, seq=2, heads=4)
        k, v = cache(batch=10, length=16), cache(batch=10, length=16)
        table = torch.arange(12).view(3, 4)
        mod = torch.zeros(3, 64, dtype=torch.float64)
        with StubbedLibrary() as library:
            sigattn.sigmoid_attention_with_kvcache(q, k, v, torch.tensor([0, 16, 40]),
                                                   block_table=table, score_mod=mod,
                                                   is_causal=False)
            sigattn.sigmoid_attention_with_kvcache(q, k, v, torch.tensor([1, 2, 3]),
                                                   block_table=table, score_mod=mod,
                                                   is_causal=False)
        # The workspace size is asked once per shape and options.
        self.assertEqual([call[0] for call in library.calls], ["workspace", "kvcache", "kvcache"])
        args = library.calls[1][1]
        self.assertEqual((args.max_cache_len, args.max_blocks, args.num_blocks, args.block_size),
                         (0, 4, 10, 16))
        self.assertEqual(args.block_table_batch_stride, 4)
        self.assertEqual((args.seqlen_new, args.k_new.data, args.causal), (0, None, 0))
        self.assertEqual(args.score_mod_batch_stride, 64)
        self.assertEqual((args.workspace, args.workspace_bytes), (None, 0))


def dispatched_ops(call):
    """The names of the ops that call() dispatches, as a torch dispatch mode sees them."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    with Recorder() as recorder:
        call()
    return recorder.ops


@unittest.skipUnless(sigattn.REGISTERED_AS_TORCH_OP, "torch < 2.4: no torch.library custom op")
class TracedPathTest(unittest.TestCase):
    """Under torch.compile, torch.export and dispatch modes the call is the custom op, so that
    tracers see sigattn::forward (the library stubbed)."""

    def test_compiling_and_dispatch_modes_take_the_custom_op(self):
        q = bthd()
        with StubbedLibrary():
            ops = dispatched_ops(lambda: sigattn.sigmoid_attention(q, q, q))
        self.assertIn("sigattn.forward.default", ops)
        counting = mock.Mock(wraps=_ops.forward_op)
        with StubbedLibrary() as library, mock.patch.object(_ops, "forward_op", counting), \
                mock.patch.object(torch.compiler, "is_compiling", lambda: True):
            sigattn.sigmoid_attention(q, q, q)
        self.assertEqual(counting.call_count, 1)
        self.assertEqual(len(library.calls), 1)

    def test_kvcache_calls_under_tracing_take_the_custom_op(self):
        q = bthd(batch=2, seq=1, heads=4)
        k, v = cache(batch=2, length=32), cache(batch=2, length=32)
        new = cache(batch=2, length=1)
        with StubbedLibrary() as library:
            ops = dispatched_ops(lambda: sigattn.sigmoid_attention_with_kvcache(
                q, k, v, torch.tensor([0, 5]), k_new=new, v_new=new))
        self.assertIn("sigattn.forward_with_kvcache.default", ops)
        self.assertEqual([call[0] for call in library.calls], ["workspace", "kvcache"])
        counting = mock.Mock(wraps=kvcache.forward_with_kvcache_op)
        with StubbedLibrary() as library, \
                mock.patch.object(kvcache, "forward_with_kvcache_op", counting), \
                mock.patch.object(torch.compiler, "is_compiling", lambda: True):
            sigattn.sigmoid_attention_with_kvcache(q, k, v, torch.tensor([0, 5]))
        self.assertEqual(counting.call_count, 1)
        self.assertEqual([call[0] for call in library.calls], ["workspace", "kvcache"])
        # The schema says which arguments the call writes.
        schema = torch.ops.sigattn.forward_with_kvcache.default._schema
        written = [argument.name for argument in schema.arguments
                   if argument.alias_info is not None and argument.alias_info.is_write]
        self.assertEqual(written, ["k_cache", "v_cache"])

    def test_export_traces_the_op_without_graph_breaks(self):
        class Block(torch.nn.Module):
            def forward(self, q, k, v):
                return sigattn.sigmoid_attention(q, k, v, is_causal=True).float().sum()

        with StubbedLibrary():
            program = torch.export.export(Block(), (bthd(), bthd(), bthd()), strict=True)
        targets = [str(node.target) for node in program.graph.nodes]
        self.assertIn("sigattn.forward.default", targets)


class LibraryTest(unittest.TestCase):
    def test_missing_library_names_where_it_looked(self):
        missing = os.path.join(tempfile.gettempdir(), "no-such-dir", "libsigattn.so")
        with mock.patch.dict(os.environ, {_library.LIBRARY_VARIABLE: missing}):
            self.assertEqual(_library.candidate_paths(), [missing])
        with self.assertRaisesRegex(sigattn.SigattnError, "no-such-dir.*no such file(.|\n)*"
                                    "SIGATTN_LIBRARY") as caught:
            _library._open_first([missing])
        self.assertIsNone(caught.exception.status)

    def test_a_library_that_is_not_sigattn_is_refused(self):
        libc = ctypes.util.find_library("c")
        with self.assertRaisesRegex(sigattn.SigattnError, "not libsigattn"):
            _library._open_first([libc])

    def test_version_matches_the_cmake_project(self):
        if library_or_none() is None:
            self.skipTest("libsigattn.so not found (set SIGATTN_LIBRARY)")
        cmake = read_text(os.path.join(REPO, "CMakeLists.txt"))
        expected = re.search(r"project\(sigattn VERSION ([0-9.]+)", cmake).group(1)
        self.assertEqual(sigattn.version(), expected)

    def test_c_abi_failures_carry_the_last_error(self):
        lib = library_or_none()
        if lib is None:
            self.skipTest("libsigattn.so not found (set SIGATTN_LIBRARY)")
        args = _library.ForwardArgs()
        lib.sigattn_forward_args_init(ctypes.byref(args))
        self.assertEqual((args.window_left, args.window_right), (-1, -1))
        args.batch = 0
        status = lib.sigattn_forward(ctypes.byref(args), None)
        with self.assertRaisesRegex(sigattn.SigattnError,
                                    r"sigattn_forward failed \(SIGATTN_INVALID_ARGUMENT\): "
                                    r"batch = 0 is out of range") as caught:
            _library.check(status, "sigattn_forward")
        self.assertEqual(caught.exception.status, "SIGATTN_INVALID_ARGUMENT")

    def test_set_database_path(self):
        if library_or_none() is None:
            self.skipTest("libsigattn.so not found (set SIGATTN_LIBRARY)")
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "tuning.db")
            sigattn.set_database_path(path)
            self.assertEqual(tuning._database_path, path)
            sigattn.set_database_path(None)
            self.assertIsNone(tuning._database_path)


class DiagnosticsTest(unittest.TestCase):
    """set_log_level / get_log_level and explain() on a described device: no GPU needed."""

    def setUp(self):
        if library_or_none() is None:
            self.skipTest("libsigattn.so not found (set SIGATTN_LIBRARY)")
        saved = sigattn.get_log_level()
        self.addCleanup(sigattn.set_log_level, saved)

    def test_levels_by_name_and_by_value(self):
        for name in ("off", "error", "warn", "info", "debug"):
            sigattn.set_log_level(name)
            self.assertEqual(sigattn.get_log_level(), name)
        sigattn.set_log_level("INFO")
        self.assertEqual(sigattn.get_log_level(), "info")
        sigattn.set_log_level(1)
        self.assertEqual(sigattn.get_log_level(), "error")

    def test_bad_levels_are_refused_and_change_nothing(self):
        sigattn.set_log_level("warn")
        with self.assertRaisesRegex(ValueError, r"log level 'loud' must be one of \('off'"):
            sigattn.set_log_level("loud")
        with self.assertRaisesRegex(TypeError, "log level must be a name or an int"):
            sigattn.set_log_level(True)
        with self.assertRaises(sigattn.SigattnError) as caught:
            sigattn.set_log_level(7)
        self.assertEqual(caught.exception.status, "SIGATTN_INVALID_ARGUMENT")
        self.assertIn("log level 7", str(caught.exception))
        self.assertEqual(sigattn.get_log_level(), "warn")

    def test_the_environment_sets_the_starting_level(self):
        program = "import sigattn; print(sigattn.get_log_level())"
        for value, level, warning in (("info", "info", ""), ("", "warn", ""),
                                      ("loud", "warn", "SIGATTN_LOG=loud is not a log level")):
            environment = dict(os.environ, SIGATTN_LOG=value)
            done = subprocess.run([sys.executable, "-c", program], env=environment,
                                  capture_output=True, text=True, check=True)
            self.assertEqual(done.stdout.strip(), level)
            self.assertIn(warning, done.stderr)

    def test_explain_on_a_described_device(self):
        q = bthd(dim=64)
        with tempfile.TemporaryDirectory() as directory:
            sigattn.set_database_path(os.path.join(directory, "sigattn.db"))
            self.addCleanup(sigattn.set_database_path, None)
            dispatch = sigattn.explain(q, q, q, is_causal=True, arch="sm_80",
                                       device_name="Test GPU", sm_count=100)
        self.assertEqual(set(dispatch), {"variant", "tile", "served_by", "reason"})
        self.assertTrue(dispatch["variant"].startswith("fwd.bf16.d64.dense.causal."),
                        dispatch["variant"])
        self.assertTrue(dispatch["variant"].endswith("/" + dispatch["tile"]), dispatch)
        self.assertTrue(dispatch["tile"].startswith("sm80."), dispatch["tile"])
        self.assertEqual(dispatch["served_by"], "heuristic")
        self.assertNotEqual(dispatch["reason"], "")

    def test_explain_with_kvcache_on_a_described_device(self):
        q = bthd(batch=1, seq=1, heads=8, dim=128)
        k, v = cache(batch=1, length=4096, heads=2, dim=128), cache(batch=1, length=4096, heads=2,
                                                                      dim=128)
        new = cache(batch=1, length=1, heads=2, dim=128)
        with tempfile.TemporaryDirectory() as directory:
            sigattn.set_database_path(os.path.join(directory, "sigattn.db"))
            self.addCleanup(sigattn.set_database_path, None)
            dispatch = sigattn.explain_with_kvcache(q, k, v, torch.tensor([100]), k_new=new,
                                                    v_new=new, arch="sm_90a", sm_count=132)
        self.assertTrue(dispatch["variant"].startswith("decode.bf16.d128.padded.causal."),
                        dispatch["variant"])
        # One sequence of two kv heads on 132 SMs: the cache is split.
        self.assertRegex(dispatch["tile"], r"\.splits([2-9]|\d\d+)$")
        self.assertIn("splits on 132 SMs", dispatch["reason"])
        with self.assertRaises(sigattn.SigattnError) as caught:
            sigattn.explain_with_kvcache(q, k, v, torch.tensor([100]), arch="sm_90a")
        self.assertIn("device.sm_count = 0", str(caught.exception))
        with self.assertRaisesRegex(ValueError, "k_new and v_new must be given together"):
            sigattn.explain_with_kvcache(q, k, v, torch.tensor([100]), k_new=new, arch="sm_90a",
                                         sm_count=132)
        with self.assertRaisesRegex(ValueError, "q is on cpu: explain without arch"):
            sigattn.explain_with_kvcache(q, k, v, torch.tensor([100]))

    def test_explain_checks_its_arguments_like_sigmoid_attention(self):
        q = bthd()
        with self.assertRaisesRegex(TypeError, "query has dtype torch.float32"):
            sigattn.explain(q.float(), q, q, arch="sm_80")
        with self.assertRaisesRegex(ValueError, r"window must be None or a \(left, right\) pair"):
            sigattn.explain(q, q, q, window=3, arch="sm_80")
        with self.assertRaisesRegex(ValueError, "seq_lens_q must have shape"):
            sigattn.explain(q, q, q, seq_lens_q=torch.tensor([1, 2, 3]), arch="sm_80")
        with self.assertRaises(sigattn.SigattnError) as caught:
            sigattn.explain(q, q, q, arch="sm_70")
        self.assertIn("unknown architecture 'sm_70'", str(caught.exception))
        self.assertEqual(caught.exception.status, "SIGATTN_INVALID_ARGUMENT")
        with self.assertRaisesRegex(ValueError, "query is on cpu: explain without arch"):
            sigattn.explain(q, q, q)


def write_executable(path, text):
    with open(path, "w") as file:
        file.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


class TuneTest(unittest.TestCase):
    def setUp(self):
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory)
        self.record = os.path.join(self.directory, "argv")
        self.executable = os.path.join(self.directory, "sigattn")
        write_executable(self.executable, f'#!/bin/sh\necho "$@" > {self.record}\nexit $EXIT\n')

    def run_tune(self, *args, exit_code=0, **kwargs):
        environment = {tuning.EXECUTABLE_VARIABLE: self.executable, "EXIT": str(exit_code)}
        with mock.patch.dict(os.environ, environment):
            tuning.tune(*args, **kwargs)
        with open(self.record) as file:
            return file.read().split()

    def test_command_lines(self):
        self.assertEqual(self.run_tune("quick", db="/tmp/x.db"),
                         ["tune", "--preset", "quick", "--db", "/tmp/x.db"])
        shapes = os.path.join(self.directory, "shapes.json")
        open(shapes, "w").close()
        self.assertEqual(self.run_tune(shapes=shapes, extra_args=["--arch", "sm_90a"]),
                         ["tune", "--shapes", shapes, "--arch", "sm_90a"])
        with mock.patch.object(tuning, "_database_path", "/tmp/set.db"):
            self.assertEqual(self.run_tune("paper"),
                             ["tune", "--preset", "paper", "--db", "/tmp/set.db"])

    def test_failure_and_bad_arguments(self):
        with self.assertRaisesRegex(sigattn.SigattnError, "failed with exit code 3"):
            self.run_tune("quick", exit_code=3)
        with self.assertRaisesRegex(ValueError, "exactly one of preset"):
            tuning.tune()
        with self.assertRaisesRegex(ValueError, "preset = 'full' must be"):
            self.run_tune("full")
        with self.assertRaisesRegex(ValueError, "is not a file"):
            self.run_tune(shapes=os.path.join(self.directory, "missing.json"))

    def test_executable_beside_the_library_or_on_path(self):
        prefix_lib = os.path.join(self.directory, "prefix", "lib", "libsigattn.so")
        prefix_bin = os.path.join(self.directory, "prefix", "bin", "sigattn")
        os.makedirs(os.path.dirname(prefix_lib))
        os.makedirs(os.path.dirname(prefix_bin))
        write_executable(prefix_bin, "#!/bin/sh\n")
        clean = {k: v for k, v in os.environ.items() if k != tuning.EXECUTABLE_VARIABLE}
        with mock.patch.dict(os.environ, clean, clear=True), \
                mock.patch.object(_library, "library_path", return_value=prefix_lib):
            self.assertEqual(tuning.find_executable(), prefix_bin)
            build_lib = os.path.join(self.directory, "libsigattn.so")
            with mock.patch.object(_library, "library_path", return_value=build_lib):
                self.assertEqual(tuning.find_executable(), self.executable)
            os.environ["PATH"] = os.path.dirname(prefix_bin)
            with mock.patch.object(_library, "library_path",
                                   side_effect=sigattn.SigattnError("none")):
                self.assertEqual(tuning.find_executable(), prefix_bin)
            os.environ["PATH"] = self.directory + "/empty"
            with mock.patch.object(_library, "library_path",
                                   side_effect=sigattn.SigattnError("none")):
                with self.assertRaisesRegex(sigattn.SigattnError, "command line was not found"):
                    tuning.find_executable()


# ctypes structure -> C type name in sigattn.h.
STRUCTS = [(_library.Tensor, "sigattn_tensor"), (_library.ForwardArgs, "sigattn_forward_args"),
           (_library.BackwardArgs, "sigattn_backward_args"),
           (_library.KvCacheArgs, "sigattn_kvcache_args"),
           (_library.Dispatch, "sigattn_dispatch"), (_library.Device, "sigattn_device")]
CONSTANTS = dict({name: code for code, name in _library.STATUS_NAMES.items()},
                 SIGATTN_BF16=_library.DTYPE_BF16, SIGATTN_FP16=_library.DTYPE_FP16,
                 SIGATTN_SIGMOID_FAST=_library.SIGMOID_FAST,
                 SIGATTN_SIGMOID_ACCURATE=_library.SIGMOID_ACCURATE,
                 **{f"SIGATTN_LOG_{name.upper()}": value
                    for value, name in enumerate(_library.LOG_LEVELS)})
ENUMS = ["sigattn_status", "sigattn_dtype", "sigattn_sigmoid", "sigattn_log_level"]


@unittest.skipUnless(os.path.isfile(HEADER), f"{HEADER} not found (run from the repository)")
@unittest.skipUnless(shutil.which("cc"), "no C compiler (cc)")
class LayoutTest(unittest.TestCase):
    """Compiles a C program printing sizeof / offsetof of every field that the ctypes structures
    declare, with the real header: a field added, removed, renamed, moved or resized in
    sigattn.h makes this fail."""

    def c_layout(self):
        lines = []
        for struct, c_name in STRUCTS:
            lines.append(f'  printf("{c_name} %zu\\n", sizeof({c_name}));')
            for field, _ in struct._fields_:
                lines.append(f'  printf("{c_name}.{field} %zu %zu\\n", '
                             f'offsetof({c_name}, {field}), sizeof((({c_name}*)0)->{field}));')
        lines += [f'  printf("{name} %zu\\n", sizeof({name}));' for name in ENUMS]
        lines += [f'  printf("{name} %d\\n", (int){name});' for name in CONSTANTS]
        program = ("#include <stddef.h>\n#include <stdio.h>\n#include <sigattn/sigattn.h>\n"
                   "int main(void) {\n" + "\n".join(lines) + "\n  return 0;\n}\n")
        with tempfile.TemporaryDirectory() as directory:
            # sigattn.h includes the version header that CMake generates; the layout needs none
            # of it, so an empty one stands in when the header comes from the source tree.
            os.makedirs(os.path.join(directory, "sigattn"))
            open(os.path.join(directory, "sigattn", "version.h"), "w").close()
            source = os.path.join(directory, "layout.c")
            with open(source, "w") as file:
                file.write(program)
            binary = os.path.join(directory, "layout")
            include = os.path.dirname(os.path.dirname(HEADER))
            subprocess.run(["cc", "-std=c11", "-Wall", "-Werror", "-I", include, "-I", directory,
                            source, "-o", binary], check=True, capture_output=True, text=True)
            output = subprocess.run([binary], check=True, capture_output=True, text=True).stdout
        return dict(line.split(" ", 1) for line in output.splitlines())

    def test_structures_match_the_header(self):
        try:
            c = self.c_layout()
        except subprocess.CalledProcessError as error:
            self.fail(f"the layout program did not compile: {error.stderr}")
        for struct, c_name in STRUCTS:
            self.assertEqual(int(c[c_name]), ctypes.sizeof(struct), f"sizeof({c_name})")
            for field, field_type in struct._fields_:
                offset, size = (int(x) for x in c[f"{c_name}.{field}"].split())
                self.assertEqual(offset, getattr(struct, field).offset, f"{c_name}.{field} offset")
                self.assertEqual(size, ctypes.sizeof(field_type), f"{c_name}.{field} size")
        for name in ENUMS:
            self.assertEqual(int(c[name]), ctypes.sizeof(ctypes.c_int), f"sizeof({name})")
        for name, value in CONSTANTS.items():
            self.assertEqual(int(c[name]), value, name)

    def test_the_header_declares_no_function_the_binding_lacks(self):
        declared = set(re.findall(r"SIGATTN_API [^;]*?\b(sigattn_\w+)\(", read_text(HEADER)))
        bound = set(re.findall(r"lib\.(sigattn_\w+)\.argtypes",
                               read_text(_library.__file__)))
        self.assertEqual(declared, bound)


if __name__ == "__main__":
    sys.exit(unittest.main())
