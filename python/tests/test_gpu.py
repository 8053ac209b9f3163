"""GPU tests of the sigattn Python package: outputs and gradients against a plain fp64 torch
implementation (padded, varlen, causal, window, GQA, score_mod, bias, BHTD-strided inputs), the
same results as TritonSigmoid through its own call signatures (when it is importable),
torch.compile(fullgraph=True) forward and backward, CUDA graph capture and replay, and
sigmoid_attention_with_kvcache on contiguous and paged caches (appends, splits, graph replays with
new lengths).
Skips itself without a CUDA GPU or without libsigattn.so. Fresh random inputs every run; each
failure message carries the seed.
"""

import math
import unittest

import torch

import sigattn
from sigattn import distributed

# Relative L2 error bounds against fp64, as in tests/gpu/numerics.cpp: the inputs are exact in
# the dtype, so the kernels' roundings of P and O are the whole difference; gradients round dS
# and P too and sum over more terms, so they get twice the bound.
OUTPUT_REL_L2 = {torch.bfloat16: 1e-2, torch.float16: 4e-3}


def gpu_unavailable_reason():
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    try:
        sigattn.library_path()
    except sigattn.SigattnError as error:
        return str(error)
    return None


SKIP_REASON = gpu_unavailable_reason()


def rel_l2(actual, expected):
    actual, expected = actual.double(), expected.double()
    return (torch.linalg.vector_norm(actual - expected) /
            torch.linalg.vector_norm(expected).clamp_min(1e-30)).item()


def reference(q, k, v, seq_lens_q=None, seq_lens_k=None, is_causal=False, window=None, scale=None,
              sigmoid_bias=None, score_mod=None):
    """Sigmoid attention written out in fp64 on [B, T, H, D] tensors (differentiable)."""
    q, k, v = q.double(), k.double(), v.double()
    batch, tq, heads_q, dim = q.shape
    tk, heads_kv = k.shape[1], k.shape[2]
    group = heads_q // heads_kv
    k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
    device = q.device
    len_q = (seq_lens_q.long() if seq_lens_q is not None
             else torch.full((batch,), tq, device=device, dtype=torch.long))
    len_k = (seq_lens_k.long() if seq_lens_k is not None
             else torch.full((batch,), tk, device=device, dtype=torch.long))
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    if sigmoid_bias is None:
        scores = scores - torch.log(len_k.double()).view(batch, 1, 1, 1)
    else:
        scores = scores + sigmoid_bias
    if score_mod is not None:
        scores = scores + score_mod.double().view(batch, 1, 1, tk)
    i = torch.arange(tq, device=device).view(1, tq, 1)
    j = torch.arange(tk, device=device).view(1, 1, tk)
    visible = (i < len_q.view(batch, 1, 1)) & (j < len_k.view(batch, 1, 1))
    diagonal = i + (len_k - len_q).view(batch, 1, 1)
    if is_causal:
        visible &= j <= diagonal
    if window is not None:
        left, right = window
        if left >= 0:
            visible &= j >= diagonal - left
        if right >= 0:
            visible &= j <= diagonal + right
    p = torch.sigmoid(scores) * visible.unsqueeze(1)
    return torch.einsum("bhij,bjhd->bihd", p, v)


def leaf(shape, dtype, layout="bthd"):
    """A random leaf tensor; with layout "bhtd" it is stored [B, H, T, D] and the BTHD view of it
    is returned with the leaf, so the call sees non-contiguous strides."""
    if layout == "bhtd":
        base = torch.randn(shape[0], shape[2], shape[1], shape[3], device="cuda", dtype=dtype)
        base.requires_grad_(True)
        return base, base.transpose(1, 2)
    base = torch.randn(*shape, device="cuda", dtype=dtype, requires_grad=True)
    return base, base


@unittest.skipIf(SKIP_REASON is not None, SKIP_REASON or "")
class GpuTestCase(unittest.TestCase):
    def setUp(self):
        self.seed = torch.seed() % (2 ** 31)
        torch.manual_seed(self.seed)

    def assert_close(self, actual, expected, bound, what):
        error = rel_l2(actual, expected)
        self.assertTrue(math.isfinite(error) and error <= bound,
                        f"{what}: relative L2 error {error:.3e} > {bound:.1e} (seed {self.seed})")


class ReferenceTest(GpuTestCase):
    def run_case(self, dtype=torch.bfloat16, batch=2, tq=200, tk=200, heads_q=4, heads_kv=4,
                 dim=64, layout="bthd", padded=False, **options):
        qb, q = leaf((batch, tq, heads_q, dim), dtype, layout)
        kb, k = leaf((batch, tk, heads_kv, dim), dtype, layout)
        vb, v = leaf((batch, tk, heads_kv, dim), dtype, layout)
        if padded:
            options["seq_lens_q"] = torch.randint(1, tq + 1, (batch,), device="cuda",
                                                  dtype=torch.int32)
            options["seq_lens_k"] = torch.randint(1, tk + 1, (batch,), device="cuda",
                                                  dtype=torch.int32)
        out = sigattn.sigmoid_attention(q, k, v, **options)
        self.assertEqual(out.shape, q.shape)
        self.assertEqual(out.dtype, dtype)
        grad_out = torch.randn_like(out)
        out.backward(grad_out)

        ref_inputs = [x.detach().double().requires_grad_(True) for x in (q, k, v)]
        ref_options = {key: value for key, value in options.items()
                       if key not in ("sigmoid", "deterministic")}
        ref = reference(*ref_inputs, **ref_options)
        ref.backward(grad_out.double())

        what = f"{dtype} {layout} {'padded ' if padded else ''}{options}"
        bound = OUTPUT_REL_L2[dtype]
        self.assert_close(out, ref, bound, f"output, {what}")
        for name, base, ref_input in zip("qkv", (qb, kb, vb), ref_inputs):
            # The gradient seen through the same BTHD view as the forward's input.
            grad = base.grad.transpose(1, 2) if layout == "bhtd" else base.grad
            self.assert_close(grad, ref_input.grad, 2 * bound, f"d{name}, {what}")
        if padded:
            for b, length in enumerate(options["seq_lens_q"].tolist()):
                self.assertEqual(out[b, length:].abs().max().item() if length < tq else 0.0, 0.0,
                                 f"padded query rows of sequence {b} are not zero")

    def test_dense(self):
        self.run_case()
        self.run_case(dtype=torch.float16, dim=128, tq=256, tk=256)

    def test_causal_and_unequal_lengths(self):
        self.run_case(is_causal=True)
        self.run_case(is_causal=True, tq=96, tk=300)

    def test_window(self):
        self.run_case(window=(32, 16))
        self.run_case(window=(48, -1), is_causal=True)

    def test_padded(self):
        self.run_case(padded=True)
        self.run_case(padded=True, is_causal=True, tq=130, tk=250, dtype=torch.float16)

    def test_gqa(self):
        self.run_case(heads_q=8, heads_kv=2, is_causal=True)
        self.run_case(heads_q=6, heads_kv=1, padded=True)

    def test_score_mod_bias_scale_and_accurate_sigmoid(self):
        score_mod = torch.randn(2, 200, device="cuda")
        self.run_case(score_mod=score_mod)
        self.run_case(score_mod=score_mod.bfloat16(), sigmoid_bias=-3.0, scale=0.2,
                      sigmoid="accurate")

    def test_one_pass_backward(self):
        self.run_case(deterministic=False)
        self.run_case(deterministic=False, padded=True, is_causal=True, heads_q=8, heads_kv=2,
                      dim=128, dtype=torch.float16)

    def test_bhtd_strided_inputs(self):
        self.run_case(layout="bhtd")
        self.run_case(layout="bhtd", padded=True, is_causal=True, heads_q=8, heads_kv=4)

    def test_varlen(self):
        for options in ({}, {"is_causal": True}, {"window": (20, 5), "sigmoid_bias": -2.0}):
            self.run_varlen(**options)

    def test_varlen_one_token_below_a_longer_max_seqlen(self):
        # cu_seqlens [0, 1, 1] with max_seqlen 127: the packed tensors hold one token.
        self.run_varlen(lens_q=[1, 0], lens_k=[1, 0], max_seqlen=127)
        self.run_varlen(lens_q=[0, 1], lens_k=[50, 77], max_seqlen=127, is_causal=True)
        self.run_varlen(lens_q=[1, 0], lens_k=[1, 0], max_seqlen=127, deterministic=False)
        # Lengths not read (as under graph capture): the token axis is held to max_seqlen rows.
        self.run_varlen(lens_q=[1, 0], lens_k=[1, 0], max_seqlen=127, trust_lengths=True)

    def run_varlen(self, heads_q=4, heads_kv=2, dim=64, dtype=torch.bfloat16, lens_q=None,
                   lens_k=None, max_seqlen=None, deterministic=True, trust_lengths=False,
                   **options):
        """Random lengths of three sequences unless given; max_seqlen defaults to the longest.
        `options` go to the reference too."""
        lens_q = lens_q or torch.randint(1, 150, (3,)).tolist()
        lens_k = lens_k or torch.randint(1, 150, (3,)).tolist()
        q = torch.randn(sum(lens_q), heads_q, dim, device="cuda", dtype=dtype, requires_grad=True)
        k = torch.randn(sum(lens_k), heads_kv, dim, device="cuda", dtype=dtype,
                        requires_grad=True)
        v = torch.randn_like(k, requires_grad=True)

        def prefix_sums(lens):
            return torch.tensor([0] + lens, device="cuda", dtype=torch.int32).cumsum(0).int()

        out = sigattn.sigmoid_attention_varlen(q, k, v, prefix_sums(lens_q), prefix_sums(lens_k),
                                               max_seqlen or max(lens_q), max_seqlen or max(lens_k),
                                               deterministic=deterministic,
                                               trust_lengths=trust_lengths, **options)
        grad_out = torch.randn_like(out)
        out.backward(grad_out)

        def pad(packed, lens):
            rows = torch.split(packed, lens)
            return torch.stack([torch.cat([r, r.new_zeros(max(lens) - len(r), *r.shape[1:])])
                                for r in rows])

        ref_inputs = [x.detach().double().requires_grad_(True) for x in (q, k, v)]
        lens = {"seq_lens_q": torch.tensor(lens_q, device="cuda"),
                "seq_lens_k": torch.tensor(lens_k, device="cuda")}
        ref_padded = reference(pad(ref_inputs[0], lens_q), pad(ref_inputs[1], lens_k),
                               pad(ref_inputs[2], lens_k), **lens, **options)
        ref = torch.cat([ref_padded[b, :n] for b, n in enumerate(lens_q)])
        ref.backward(grad_out.double())
        bound = OUTPUT_REL_L2[dtype]
        self.assert_close(out, ref, bound, f"varlen output {options}")
        for name, x, ref_input in zip("qkv", (q, k, v), ref_inputs):
            self.assert_close(x.grad, ref_input.grad, 2 * bound, f"varlen d{name} {options}")

    def test_runtime_errors_carry_the_library_message(self):
        q = torch.randn(2, 64, 4, 64, device="cuda", dtype=torch.bfloat16)
        lens = torch.tensor([64, 70], device="cuda", dtype=torch.int32)
        with self.assertRaisesRegex(sigattn.SigattnError,
                                    r"SIGATTN_INVALID_ARGUMENT.*seq_lens_k\[1\] = 70 is out of "
                                    r"range \[0, 64\]"):
            sigattn.sigmoid_attention(q, q, q, seq_lens_k=lens)


def import_triton_sigmoid():
    try:
        import triton_sigmoid
    except Exception as error:  # it raises RuntimeError, not ImportError, on unsupported GPUs
        return None, f"triton_sigmoid is not importable: {error}"
    return triton_sigmoid, None


class TritonSigmoidTest(GpuTestCase):
    """The same call expressions on both modules give the same results."""

    def setUp(self):
        super().setUp()
        self.triton_sigmoid, reason = import_triton_sigmoid()
        if self.triton_sigmoid is None:
            self.skipTest(reason)

    def compare(self, call, inputs, what):
        results = []
        for module in (sigattn, self.triton_sigmoid):
            leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
            out = call(module, *leaves)
            out.backward(self.grad_out)
            results.append([out] + [x.grad for x in leaves])
        # Two approximations of the same function: twice the bounds against fp64.
        bound = 2 * OUTPUT_REL_L2[inputs[0].dtype]
        for name, ours, theirs in zip(("output", "dq", "dk", "dv"), *results):
            self.assert_close(ours, theirs, bound if name == "output" else 2 * bound,
                              f"{what} {name} vs TritonSigmoid")

    def inputs(self, batch=2, seq=256, heads=4, dim=64, dtype=torch.bfloat16):
        qkv = [torch.randn(batch, seq, heads, dim, device="cuda", dtype=dtype) for _ in range(3)]
        self.grad_out = torch.randn_like(qkv[0])
        return qkv

    def test_dense(self):
        qkv = self.inputs()
        self.compare(lambda m, q, k, v: m.sigmoid_attention(q, k, v), qkv, "dense")
        self.compare(lambda m, q, k, v: m.sigmoid_attention(q, k, v, is_causal=True), qkv,
                     "causal")
        score_mod = torch.randn(2, 256, device="cuda")
        self.compare(lambda m, q, k, v: m.sigmoid_attention(q, k, v, True, 0.1, -2.0, score_mod),
                     qkv, "positional scale, bias, score_mod")

    def test_padded(self):
        qkv = self.inputs(dim=128, dtype=torch.float16)
        lens = torch.randint(1, 257, (2,), device="cuda", dtype=torch.int32)
        self.compare(lambda m, q, k, v: m.sigmoid_attention_padded(q, k, v, seq_lens_k=lens,
                                                                   seq_lens_q=lens), qkv,
                     "padded")
        self.compare(lambda m, q, k, v: m.sigmoid_attention_padded(q, k, v, lens, lens, True),
                     qkv, "padded causal, positional")


@unittest.skipUnless(sigattn.REGISTERED_AS_TORCH_OP, "torch < 2.4: no torch.library custom op")
class CompileTest(GpuTestCase):
    def setUp(self):
        super().setUp()
        torch._dynamo.reset()

    def test_opcheck(self):
        q = torch.randn(2, 128, 4, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(2, 160, 2, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn_like(k, requires_grad=True)
        lens_q = torch.tensor([100, 128], device="cuda", dtype=torch.int32)
        lens_k = torch.tensor([90, 160], device="cuda", dtype=torch.int32)
        args = (q, k, v, lens_q, lens_k, None, None, None, 128, 160, True, -1, -1, None, None,
                False, False, True)
        torch.library.opcheck(torch.ops.sigattn.forward.default, args)

    def check_compiled(self, fn, inputs):
        eager_leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
        compiled_leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
        expected = fn(*eager_leaves)
        expected.backward()
        actual = torch.compile(fn, fullgraph=True)(*compiled_leaves)
        actual.backward()
        # The same kernels run on the same values; only Inductor's order of the fp32 loss sum
        # and the rounding of its fused elementwise code may differ.
        self.assert_close(actual, expected, 1e-4, "compiled loss")
        for name, a, e in zip("qkv", compiled_leaves, eager_leaves):
            self.assert_close(a.grad, e.grad, 1e-3, f"compiled d{name}")

    def test_fullgraph_padded(self):
        lens = torch.tensor([70, 128], device="cuda", dtype=torch.int32)
        score_mod = torch.randn(2, 128, device="cuda")

        def loss(q, k, v):
            x = torch.nn.functional.gelu(q.float()).to(q.dtype)
            out = sigattn.sigmoid_attention(x, k, v, is_causal=True, score_mod=score_mod,
                                            seq_lens_q=lens, seq_lens_k=lens)
            return out.float().square().sum()

        self.check_compiled(loss, [torch.randn(2, 128, 8, 64, device="cuda",
                                               dtype=torch.bfloat16) for _ in range(3)])

    def test_fullgraph_bhtd_and_varlen(self):
        cu = torch.tensor([0, 100, 256], device="cuda", dtype=torch.int32)

        def loss(q, k, v):
            bthd = [q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)]
            packed = [x.reshape(-1, 4, 64) for x in bthd]
            strided = sigattn.sigmoid_attention(bthd[0], bthd[1], bthd[2])
            varlen = sigattn.sigmoid_attention_varlen(*packed, cu, cu, 156, 156, is_causal=True)
            return strided.float().sum() + varlen.float().square().sum()

        self.check_compiled(loss, [torch.randn(2, 4, 128, 64, device="cuda",
                                               dtype=torch.float16) for _ in range(3)])


class CudaGraphTest(GpuTestCase):
    """Kernels compile on first use: one eager call before capture, then capture and replay."""

    def test_forward_and_backward_capture_and_replay(self):
        shape = (2, 192, 4, 64)
        static = [torch.randn(*shape, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                  for _ in range(3)]
        lens = torch.tensor([192, 100], device="cuda", dtype=torch.int32)
        grad_out = torch.randn(*shape, device="cuda", dtype=torch.bfloat16)

        def step():
            out = sigattn.sigmoid_attention(*static, is_causal=True, seq_lens_q=lens,
                                            seq_lens_k=lens)
            out.backward(grad_out)
            return out

        graph, static_out = capture_after_warm_up(step, static)
        with torch.no_grad():
            for x in static:
                x.copy_(torch.randn(*shape, device="cuda", dtype=torch.bfloat16))
            lens.copy_(torch.tensor([150, 192], device="cuda", dtype=torch.int32))
            grad_out.copy_(torch.randn_like(grad_out))
        graph.replay()
        torch.cuda.synchronize()

        eager = [x.detach().clone().requires_grad_(True) for x in static]
        expected = sigattn.sigmoid_attention(*eager, is_causal=True, seq_lens_q=lens,
                                             seq_lens_k=lens)
        expected.backward(grad_out)
        self.assertTrue(torch.equal(static_out, expected),
                        "replayed output differs from eager")
        for name, x, e in zip("qkv", static, eager):
            self.assertTrue(torch.equal(x.grad, e.grad), f"replayed d{name} differs from eager")

    def test_padded_lengths_out_of_range_are_clamped_on_replay(self):
        # Under capture the host never sees the lengths: replayed with lengths below 0 and above
        # the padded length, the kernels clamp them to [0, 192] (README, torch.compile and CUDA
        # graphs), forward and backward.
        shape = (2, 192, 4, 64)
        static = [torch.randn(*shape, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                  for _ in range(3)]
        lens_q = torch.tensor([192, 100], device="cuda", dtype=torch.int32)
        lens_k = torch.tensor([150, 192], device="cuda", dtype=torch.int32)
        grad_out = torch.randn(*shape, device="cuda", dtype=torch.bfloat16)

        def step():
            out = sigattn.sigmoid_attention(*static, seq_lens_q=lens_q, seq_lens_k=lens_k)
            out.backward(grad_out)
            return out

        graph, static_out = capture_after_warm_up(step, static)
        lens_q.copy_(torch.tensor([-5, 1 << 30], dtype=torch.int32))
        lens_k.copy_(torch.tensor([1000, -1], dtype=torch.int32))
        graph.replay()
        torch.cuda.synchronize()

        clamped_q = torch.tensor([0, 192], device="cuda", dtype=torch.int32)
        clamped_k = torch.tensor([192, 0], device="cuda", dtype=torch.int32)
        ref_inputs = [x.detach().double().requires_grad_(True) for x in static]
        expected = reference(*ref_inputs, seq_lens_q=clamped_q, seq_lens_k=clamped_k)
        expected.backward(grad_out.double())
        self.assertLess(rel_l2(static_out, expected), 2e-2)
        for name, x, e in zip("qkv", static, ref_inputs):
            self.assertTrue(torch.isfinite(x.grad).all(), f"d{name} is not finite")
            self.assertLess(rel_l2(x.grad, e.grad), 3e-2, f"d{name}")

    def test_varlen_lengths_out_of_range_are_clamped_on_replay(self):
        # Packed 300 tokens, max_seqlen 128: replayed with a sequence longer than max_seqlen, one
        # whose end lies before its start and one of 128, every length is clamped to [0, 128]
        # from the sequence's start; rows no clamped sequence covers keep what the call's
        # zero-initialized output holds.
        heads, dim, max_seqlen = 4, 64, 128
        q, k, v = (torch.randn(300, heads, dim, device="cuda", dtype=torch.bfloat16)
                   for _ in range(3))
        cu = torch.tensor([0, 100, 200, 300], device="cuda", dtype=torch.int32)

        def step():
            return sigattn.sigmoid_attention_varlen(q, k, v, cu, cu, max_seqlen, max_seqlen)

        graph, static_out = capture_after_warm_up(step, [])
        cu.copy_(torch.tensor([0, 200, 150, 278], dtype=torch.int32))
        graph.replay()
        torch.cuda.synchronize()

        out = static_out.double()
        for start, length in ((0, 128), (150, 128)):
            rows = slice(start, start + length)
            expected = reference(q[rows].unsqueeze(0), k[rows].unsqueeze(0),
                                 v[rows].unsqueeze(0))[0]
            self.assertLess(rel_l2(out[rows], expected), 2e-2, f"sequence at {start}")
        self.assertTrue(torch.equal(out[128:150], torch.zeros_like(out[128:150])))
        self.assertTrue(torch.equal(out[278:], torch.zeros_like(out[278:])))


def capture_after_warm_up(step, leaves):
    """Runs step once on a side stream (compiling its kernels), clears the leaves' gradients and
    captures step in a CUDA graph; returns the graph and the output tensor its replays write."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    for x in leaves:
        x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    return graph, out


class KvCacheTest(GpuTestCase):
    """sigmoid_attention_with_kvcache against the fp64 reference on the cache after the append (the
    reference's bottom-right diagonal is the cache's: query i at position len - seqlen_q + i)."""

    def make(self, dtype=torch.bfloat16, batch=3, capacity=300, heads_q=8, heads_kv=2, dim=128,
             seqlen_q=1, seqlen_new=1, lens=(0, 1, 250), block_size=None):
        """Random q, new tokens and cache; a paged cache (block_size) gets a shuffled block
        table. Returns the call's tensors and the logical cache [B, capacity, Hkv, D] they hold."""
        lens = torch.tensor(lens, device="cuda", dtype=torch.int32)
        q = torch.randn(batch, seqlen_q, heads_q, dim, device="cuda", dtype=dtype)
        new = [torch.randn(batch, seqlen_new, heads_kv, dim, device="cuda", dtype=dtype)
               for _ in range(2)] if seqlen_new else [None, None]
        logical = [torch.randn(batch, capacity, heads_kv, dim, device="cuda", dtype=dtype)
                   for _ in range(2)]
        table = None
        if block_size is None:
            caches = [x.clone() for x in logical]
        else:
            blocks_per_sequence = capacity // block_size
            table = torch.randperm(batch * blocks_per_sequence + 2, device="cuda")[
                :batch * blocks_per_sequence].view(batch, blocks_per_sequence).to(torch.int32)
            caches = []
            for x in logical:
                paged = torch.full((batch * blocks_per_sequence + 2, block_size, heads_kv, dim),
                                   float("nan"), device="cuda", dtype=dtype)
                paged[table.flatten().long()] = x.reshape(-1, block_size, heads_kv, dim)
                caches.append(paged)
        return q, caches, lens, new, table, logical

    def check(self, q, caches, lens, new, table, logical, **options):
        out = sigattn.sigmoid_attention_with_kvcache(q, caches[0], caches[1], lens, k_new=new[0],
                                                     v_new=new[1], block_table=table, **options)
        seqlen_new = 0 if new[0] is None else new[0].shape[1]
        for b, length in enumerate(lens.tolist()):
            for x, n in zip(logical, new):
                if n is not None:
                    x[b, length:length + seqlen_new] = n[b]
        if table is not None:
            block_size = caches[0].shape[1]
            for x, cache in zip(logical, caches):
                gathered = cache[table.flatten().long()].view(x.shape)
                filled = torch.arange(x.shape[1], device="cuda") < (lens + seqlen_new).view(-1, 1)
                self.assertTrue(torch.equal(gathered[filled], x[filled]),
                                f"the paged cache after the append (block {block_size})")
        else:
            for x, cache in zip(logical, caches):
                self.assertTrue(torch.equal(cache, x), "the cache after the append")
        ref_options = {key: value for key, value in options.items() if key != "sigmoid"}
        ref = reference(q, logical[0], logical[1], seq_lens_k=lens + seqlen_new, **ref_options)
        self.assertFalse(torch.isnan(out).any().item(), "NaN in the output")
        self.assert_close(out, ref, OUTPUT_REL_L2[q.dtype], f"kvcache output {options}")
        return out

    def test_contiguous_decode_with_append(self):
        self.check(*self.make(), is_causal=True)

    def test_paged_decode_on_block_boundaries(self):
        self.check(*self.make(lens=(15, 16, 31), capacity=16 * 8, block_size=16), is_causal=True)

    def test_speculative_rows_window_score_mod_and_bias(self):
        q, caches, lens, new, table, logical = self.make(
            dtype=torch.float16, dim=64, heads_q=16, heads_kv=2, seqlen_q=4, seqlen_new=4,
            lens=(0, 60, 120), capacity=256, block_size=64)
        mod = torch.randn(3, 256, device="cuda")
        self.check(q, caches, lens, new, table, logical, is_causal=True, window=(30, -1),
                   score_mod=mod, sigmoid_bias=-5.0, sigmoid="accurate")

    def test_one_long_sequence_splits_the_cache(self):
        # batch 1, GQA 32:8: too few (sequence, kv head) pairs to fill the GPU, so the cache is
        # split and the partial outputs added.
        self.check(*self.make(batch=1, heads_q=32, heads_kv=8, capacity=8192, lens=(8000,),
                              seqlen_new=0), is_causal=True)

    def test_chunked_prefill(self):
        self.check(*self.make(batch=2, heads_q=8, heads_kv=8, seqlen_q=40, seqlen_new=40,
                              lens=(0, 100), capacity=192), is_causal=True)

    def test_cuda_graph_replays_with_new_lengths(self):
        q, caches, lens, new, table, logical = self.make(batch=2, capacity=512, lens=(100, 7),
                                                         block_size=32)
        step = lambda: sigattn.sigmoid_attention_with_kvcache(  # noqa: E731
            q, caches[0], caches[1], lens, k_new=new[0], v_new=new[1], block_table=table)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = step()
        for lengths in ((101, 8), (300, 0), (479, 64)):
            lens.copy_(torch.tensor(lengths, device="cuda", dtype=torch.int32))
            for x in new:
                x.copy_(torch.randn_like(x))
            graph.replay()
            torch.cuda.synchronize()
            for x, cache in zip(logical, caches):
                x.copy_(cache[table.flatten().long()].view(x.shape))
            ref = reference(q, logical[0], logical[1], seq_lens_k=lens + 1, is_causal=True)
            self.assert_close(static_out, ref, OUTPUT_REL_L2[q.dtype],
                              f"replayed decode step at lengths {lengths}")

    @unittest.skipUnless(sigattn.REGISTERED_AS_TORCH_OP, "torch < 2.4: no torch.library op")
    def test_torch_compile_fullgraph_appends_and_attends(self):
        q, caches, lens, new, table, logical = self.make(lens=(3, 0, 200), block_size=50)

        def step(q, k_cache, v_cache, lens, k_new, v_new, table):
            out = sigattn.sigmoid_attention_with_kvcache(q, k_cache, v_cache, lens, k_new=k_new,
                                                         v_new=v_new, block_table=table)
            return out * 2

        compiled = torch.compile(step, fullgraph=True)
        out = compiled(q, caches[0], caches[1], lens, new[0], new[1], table) / 2
        for b, length in enumerate(lens.tolist()):
            for x, n in zip(logical, new):
                x[b, length:length + 1] = n[b]
        for x, cache in zip(logical, caches):
            filled = torch.arange(x.shape[1], device="cuda") < (lens + 1).view(-1, 1)
            gathered = cache[table.flatten().long()].view(x.shape)
            self.assertTrue(torch.equal(gathered[filled], x[filled]),
                            "the paged cache after a compiled append")
        ref = reference(q, logical[0], logical[1], seq_lens_k=lens + 1, is_causal=True)
        self.assert_close(out, ref, OUTPUT_REL_L2[q.dtype], "compiled decode step")

    def test_bad_lengths_are_refused(self):
        q, caches, lens, new, table, _ = self.make(capacity=64, lens=(0, 63, 5))
        with self.assertRaisesRegex(sigattn.SigattnError,
                                    r"cache_seqlens\[1\] = 64 is out of range \[0, 63\]"):
            sigattn.sigmoid_attention_with_kvcache(q, caches[0], caches[1], lens + 1,
                                                   k_new=new[0], v_new=new[1])


class ContextParallelTest(GpuTestCase):
    """sigattn.distributed's ring and Ulysses algorithms with the kernels, every rank simulated
    on this GPU, against fp64 sigmoid attention of the whole sequence."""

    def whole(self, dtype=torch.bfloat16, batch=2, length=1024, heads_q=8, heads_kv=4, dim=128):
        tensors = [torch.randn(batch, length, heads, dim, device="cuda", dtype=dtype)
                   for heads in (heads_q, heads_kv, heads_kv, heads_q)]
        return tensors

    def check(self, outs, grads, whole, zigzag, what, **options):
        q, k, v, grad = whole
        leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
        ref = reference(*leaves, **options)
        ref_grads = torch.autograd.grad(ref, leaves, grad.double())
        bound = OUTPUT_REL_L2[q.dtype]
        self.assert_close(distributed.unshard_sequence(outs, zigzag=zigzag), ref, bound,
                          f"{what} output")
        for name, shards, full in zip("qkv", grads, ref_grads):
            self.assert_close(distributed.unshard_sequence(shards, zigzag=zigzag), full,
                              2 * bound, f"{what} d{name}")

    def test_ring(self):
        for world_size, is_causal, dtype in ((4, True, torch.bfloat16), (3, False, torch.float16),
                                             (2, True, torch.float16)):
            whole = self.whole(dtype=dtype, length=768)
            shards = [[distributed.shard_sequence(x, r, world_size, zigzag=is_causal)
                       for r in range(world_size)] for x in whole]
            outs, grads = distributed.simulated_ring_attention(
                *shards[:3], is_causal=is_causal, grad_outs=shards[3])
            self.check(outs, grads, whole, is_causal,
                       f"ring of {world_size}, causal {is_causal}, {dtype}", is_causal=is_causal)

    def test_ulysses(self):
        for world_size, is_causal, window in ((4, True, None), (2, False, (100, 20))):
            whole = self.whole(dim=64)
            leaves = [[distributed.shard_sequence(x, r, world_size).clone().requires_grad_()
                       for r in range(world_size)] for x in whole[:3]]
            outs = distributed.simulated_ulysses_attention(*leaves, is_causal=is_causal,
                                                           window=window)
            grad_shards = [distributed.shard_sequence(whole[3], r, world_size)
                           for r in range(world_size)]
            torch.autograd.backward(outs, grad_shards)
            grads = [[leaf.grad for leaf in shards] for shards in leaves]
            self.check(outs, grads, whole, False,
                       f"ulysses of {world_size}, causal {is_causal}, window {window}",
                       is_causal=is_causal, window=window)


if __name__ == "__main__":
    unittest.main()
