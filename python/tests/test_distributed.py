"""The context-parallel algorithms of sigattn.distributed on the CPU: sharding, the ring's steps
(zigzag causal blocks, the travelling dK/dV sums) and Ulysses' exchanges, checked with a float64
reference standing in for the kernel; in one process with every rank simulated, and on two
processes over torch.distributed's gloo backend. The same algorithms with the kernels on a GPU:
test_gpu.py; and on several GPUs over NCCL with the kernels:
`torchrun --nproc-per-node 2 python/tests/test_distributed.py --nccl`.
"""

import math
import os
import sys
import tempfile
import unittest
from unittest import mock

import torch
import torch.distributed as dist

from sigattn import distributed


def reference_attention(q, k, v, is_causal=False, scale=None, bias=None, window=None):
    """Sigmoid attention of [B, L, H, D] tensors in q's dtype, bias default -log(Lk), causal
    and window aligned bottom-right; K/V heads repeated for GQA."""
    length_q, length_k, heads, dim = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
    k = k.repeat_interleave(heads // k.shape[2], dim=2)
    v = v.repeat_interleave(heads // v.shape[2], dim=2)
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    bias = -math.log(length_k) if bias is None else bias
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale + bias
    offset = (torch.arange(length_k, device=q.device).view(1, -1) -
              torch.arange(length_q, device=q.device).view(-1, 1) - (length_k - length_q))
    visible = torch.ones(length_q, length_k, dtype=torch.bool, device=q.device)
    if is_causal:
        visible &= offset <= 0
    if window is not None:
        left, right = window
        if left >= 0:
            visible &= offset >= -left
        if right >= 0:
            visible &= offset <= right
    weights = torch.sigmoid(scores) * visible
    return torch.einsum("bhqk,bkhd->bqhd", weights, v)


def reference_forward(q, k, v, causal, options):
    return reference_attention(q, k, v, causal, options.scale, options.bias)


def reference_backward(grad_out, q, k, v, causal, options):
    with torch.enable_grad():
        inputs = [x.detach().requires_grad_() for x in (q, k, v)]
        out = reference_forward(*inputs, causal, options)
    return torch.autograd.grad(out, inputs, grad_out)


def reference_local_attention(q, k, v, is_causal, window, scale, sigmoid_bias, sigmoid):
    return reference_attention(q, k, v, is_causal, scale, sigmoid_bias, window)


def with_reference_kernels():
    return mock.patch.multiple(distributed, _local_forward=reference_forward,
                               _local_backward=reference_backward,
                               _local_attention=reference_local_attention)


def sequences(seed, batch=2, length=24, heads_q=4, heads_kv=2, dim=8):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, length, heads, dim, dtype=torch.float64, generator=generator)
            for heads in (heads_q, heads_kv, heads_kv, heads_q)]


def assert_close(test, actual, expected, what):
    error = (actual - expected).norm() / expected.norm()
    test.assertLess(error.item(), 1e-6, what)


class ShardingTest(unittest.TestCase):
    def test_zigzag_shards_hold_mirrored_chunks_and_unshard_back(self):
        x = torch.arange(16).view(1, 16)
        shards = [distributed.shard_sequence(x, r, 4, zigzag=True) for r in range(4)]
        self.assertEqual(shards[0].tolist(), [[0, 1, 14, 15]])
        self.assertEqual(shards[3].tolist(), [[6, 7, 8, 9]])
        self.assertTrue(torch.equal(distributed.unshard_sequence(shards, zigzag=True), x))
        plain = [distributed.shard_sequence(x, r, 4) for r in range(4)]
        self.assertEqual(plain[1].tolist(), [[4, 5, 6, 7]])
        self.assertTrue(torch.equal(distributed.unshard_sequence(plain), x))

    def test_uneven_lengths_and_bad_ranks_are_named(self):
        x = torch.zeros(1, 12)
        with self.assertRaisesRegex(ValueError, "length 12 does not divide into 8 equal chunks"):
            distributed.shard_sequence(x, 0, 4, zigzag=True)
        with self.assertRaisesRegex(ValueError, r"rank 4 is outside \[0, 4\)"):
            distributed.shard_sequence(x, 4, 4)

    def test_causal_ring_refuses_shards_that_cannot_be_zigzag(self):
        q = torch.zeros(1, 6, 2, 8)
        k = torch.zeros(1, 4, 2, 8)
        with self.assertRaisesRegex(ValueError, "zigzag shards"):
            distributed.simulated_ring_attention([q, q], [k, k], [k, k], is_causal=True)

    def test_ring_options_are_checked_before_any_step(self):
        q = torch.zeros(1, 4, 2, 8)
        with self.assertRaisesRegex(ValueError, "sigmoid = 'exact' must be one of"):
            distributed.simulated_ring_attention([q, q], [q, q], [q, q], sigmoid="exact")
        with self.assertRaisesRegex(ValueError, "scale = -1.0 must be finite and > 0"):
            distributed.simulated_ring_attention([q, q], [q, q], [q, q], scale=-1)
        with self.assertRaisesRegex(ValueError, "sigmoid_bias = nan must be finite"):
            distributed.simulated_ring_attention([q, q], [q, q], [q, q], sigmoid_bias=math.nan)
        with self.assertRaisesRegex(ValueError, "k and v shards must have one shape"):
            distributed.simulated_ring_attention([q, q], [q, q], [q[:, :2], q[:, :2]])

    def test_ulysses_needs_heads_divisible_by_the_ranks(self):
        q = torch.zeros(1, 4, 8, 8)
        k = torch.zeros(1, 4, 2, 8)
        with self.assertRaisesRegex(ValueError, "k/v has 2 heads, not a multiple of 4"):
            distributed.simulated_ulysses_attention([q] * 4, [k] * 4, [k] * 4)


class SimulatedRingTest(unittest.TestCase):
    """Every rank's ring steps in one process against the reference on the whole sequence."""

    def check(self, world_size, is_causal, seed, **options):
        q, k, v, grad = sequences(seed, length=4 * world_size)
        q.requires_grad_()
        k.requires_grad_()
        v.requires_grad_()
        expected = reference_attention(q, k, v, is_causal, options.get("scale"),
                                       options.get("sigmoid_bias"))
        expected.backward(grad)
        zigzag = is_causal

        def shards(x):
            return [distributed.shard_sequence(x.detach(), r, world_size, zigzag=zigzag)
                    for r in range(world_size)]

        with with_reference_kernels():
            outs, grads = distributed.simulated_ring_attention(
                shards(q), shards(k), shards(v), is_causal=is_causal, grad_outs=shards(grad),
                **options)
        what = f"{world_size} ranks, causal {is_causal}, {options}"
        assert_close(self, distributed.unshard_sequence(outs, zigzag=zigzag), expected,
                     f"output, {what}")
        for name, shard_grads, full in zip("qkv", grads, (q.grad, k.grad, v.grad)):
            assert_close(self, distributed.unshard_sequence(shard_grads, zigzag=zigzag), full,
                         f"d{name}, {what}")

    def test_full_attention(self):
        for world_size in (1, 2, 3):
            self.check(world_size, False, seed=world_size)

    def test_causal_zigzag(self):
        for world_size in (1, 2, 4):
            self.check(world_size, True, seed=10 + world_size)

    def test_scale_and_bias(self):
        self.check(3, True, seed=20, scale=0.3, sigmoid_bias=-1.5)


class SimulatedUlyssesTest(unittest.TestCase):
    def test_forward_and_backward_against_the_whole_sequence(self):
        for world_size, is_causal, window in ((2, False, None), (2, True, (5, -1)),
                                              (1, True, None)):
            q, k, v, grad = sequences(30 + world_size, heads_q=4, heads_kv=2,
                                      length=6 * world_size)
            for x in (q, k, v):
                x.requires_grad_()
            expected = reference_attention(q, k, v, is_causal, window=window)
            inputs = [[distributed.shard_sequence(x, r, world_size) for r in range(world_size)]
                      for x in (q, k, v)]
            with with_reference_kernels():
                outs = distributed.simulated_ulysses_attention(*inputs, is_causal=is_causal,
                                                               window=window)
            out = distributed.unshard_sequence(outs)
            what = f"{world_size} ranks, causal {is_causal}, window {window}"
            assert_close(self, out, expected, f"output, {what}")
            full_grads = torch.autograd.grad(expected, (q, k, v), grad)
            shard_grads = torch.autograd.grad(out, (q, k, v), grad)
            for name, actual, full in zip("qkv", shard_grads, full_grads):
                assert_close(self, actual, full, f"d{name}, {what}")


def check_on_this_rank(make, bounds, whole_sequence_attention=None):
    """Ring attention (causal, zigzag) and Ulysses (causal, contiguous shards) on this rank of the
    default group, forward and backward, against the reference of the whole sequence, which every
    rank computes itself from the same inputs (make(): q, k, v and the output gradient).
    bounds: the relative L2 errors allowed for the output and for the gradients. With
    whole_sequence_attention (the kernel on one GPU), the results are also held to it, at twice
    the bounds."""
    rank = dist.get_rank()
    for method in ("ring", "ulysses"):
        q, k, v, grad = make()
        full = [x.detach().double().requires_grad_() for x in (q, k, v)]
        expected = reference_attention(*full, True)
        expected_grads = torch.autograd.grad(expected, full, grad.double())
        references = [(expected, list(expected_grads), 1)]
        if whole_sequence_attention is not None:
            leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
            single = whole_sequence_attention(*leaves)
            single.backward(grad)
            references.append((single, [x.grad for x in leaves], 2))
        zigzag = method == "ring"
        local = [distributed.shard(x.detach(), zigzag=zigzag).clone().requires_grad_()
                 for x in (q, k, v)]
        call = distributed.ring_attention if zigzag else distributed.ulysses_attention
        out = call(*local, is_causal=True)
        out.backward(distributed.shard(grad, zigzag=zigzag))
        results = [distributed.unshard(x.detach(), zigzag=zigzag)
                   for x in [out] + [x.grad for x in local]]
        for whole_out, whole_grads, factor in references:
            for what, actual, whole, bound in zip(
                    ("output", "dq", "dk", "dv"), results, [whole_out] + whole_grads,
                    (bounds[0],) + (bounds[1],) * 3):
                error = ((actual.double() - whole.double()).norm() / whole.double().norm()).item()
                if not error <= factor * bound:
                    raise AssertionError(f"{method}, rank {rank}: {what} differs from the "
                                         f"{'kernel on one GPU' if factor > 1 else 'reference'} "
                                         f"by {error:.2e} (relative L2; bound "
                                         f"{factor * bound:.1e})")


def two_process_run(rank, world_size, init_file, seed):
    """One rank of the gloo test, with the reference standing in for the kernel."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    try:
        with with_reference_kernels():
            check_on_this_rank(lambda: sequences(seed, length=8 * world_size), (1e-6, 1e-6))
    finally:
        dist.destroy_process_group()


def nccl_main():
    """Under torchrun on N GPUs: the kernels over NCCL, bf16, L = 1024 per GPU, d = 128, GQA 2:1,
    against fp64 and against sigmoid_attention on one GPU (bounds as in test_gpu.py)."""
    import sigattn

    dist.init_process_group("nccl")
    try:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        generator = torch.Generator(device="cuda").manual_seed(1234)
        length = 1024 * dist.get_world_size()

        def make():
            return [torch.randn(2, length, heads, 128, device="cuda", dtype=torch.bfloat16,
                                generator=generator) for heads in (8, 4, 4, 8)]

        check_on_this_rank(make, (1e-2, 2e-2),
                           lambda q, k, v: sigattn.sigmoid_attention(q, k, v, is_causal=True))
        print(f"rank {dist.get_rank()} of {dist.get_world_size()}: ring and Ulysses match")
    finally:
        dist.destroy_process_group()


@unittest.skipUnless(dist.is_available() and dist.is_gloo_available(),
                     "torch.distributed with gloo is not available")
class GlooTest(unittest.TestCase):
    def test_ring_and_ulysses_on_two_processes(self):
        import torch.multiprocessing as mp

        with tempfile.TemporaryDirectory() as directory:
            init_file = os.path.join(directory, "init")
            mp.spawn(two_process_run, args=(2, init_file, 7), nprocs=2, join=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--nccl"]:
        nccl_main()
    else:
        unittest.main()
