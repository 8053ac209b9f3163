"""Forward and backward benchmark of sigattn against its peers, in one process on one GPU, on the same inputs.

Peers: TritonSigmoid (PyPI `triton-sigmoid`: dense and padded kernels) and torch SDPA with the
cuDNN and flash backends (softmax, speed-of-light references). Protocol of ../shared
BENCHMARKS.md: 16,384 tokens per batch, hidden 2,048 (B = 16384 / L, H = 2048 / d), BTHD,
random-normal inputs, padding p draws each length uniformly from [L(1-p), L]; FLOPs 4·B·H·L²·d
(padded: 4·H·d·Σ len²); the median of triton.testing.do_bench (L2 flushed between reps).
Prints a table with ratios, writes CSV (after every shape) and a PNG plot (report.py).
"""

import argparse
import sys

import torch
import triton.testing

import sigattn_ctypes
from report import format_row, plot, print_table, write_csv

TOKENS = 16384
HIDDEN = 2048


def parse_ints(text):
    return [int(x) for x in text.split(",") if x]


def make_case(d, L, pad, dtype, gen):
    B, H = TOKENS // L, HIDDEN // d
    q, k, v = (torch.randn(B, L, H, d, device="cuda", dtype=dtype, generator=gen)
               for _ in range(3))
    lens = None
    if pad > 0:
        low = max(1, int(L * (1 - pad / 100)))
        lens = torch.randint(low, L + 1, (B,), device="cuda", dtype=torch.int32, generator=gen)
    return q, k, v, lens


def flops(B, H, L, d, lens, causal):
    if lens is None:
        total = 4.0 * B * H * L * L * d
    else:
        total = 4.0 * H * d * float((lens.double() ** 2).sum())
    return total / 2 if causal else total


def time_ms(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def rel_l2(a, b, lens=None):
    """Relative L2 error of a against b over the valid rows (all rows when lens is None)."""
    if lens is not None:
        mask = (torch.arange(a.shape[1], device=a.device)[None, :] < lens[:, None].long())
        a, b = a[mask], b[mask]
    a, b = a.float(), b.float()
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", default=None, help="path to libsigattn.so")
    parser.add_argument("--d", default="64,128")
    parser.add_argument("--L", default="512,1024,2048,4096,8192,16384")
    parser.add_argument("--pad", default="0,25,50", help="padding percentages")
    parser.add_argument("--causal", default="0", help="0, 1 or 0,1")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--peers", default="triton,cudnn,flash")
    parser.add_argument("--csv", default="bench.csv")
    parser.add_argument("--png", default="bench.png")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--backward", type=int, default=1, help="also time the backward (0/1)")
    args = parser.parse_args()

    lib = sigattn_ctypes.load(args.lib)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    peers = set(args.peers.split(","))
    tsig = None
    if "triton" in peers:
        try:
            import triton_sigmoid as tsig
        except ImportError as e:
            print(f"TritonSigmoid not importable ({e}); skipping it", file=sys.stderr)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    seed = args.seed if args.seed is not None else torch.seed() % (2**31)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"triton {triton.__version__}, dtype {args.dtype}, seed {seed}")

    rows = []
    for d in parse_ints(args.d):
        for L in parse_ints(args.L):
            for pad in parse_ints(args.pad):
                for causal in parse_ints(args.causal):
                    q, k, v, lens = make_case(d, L, pad, dtype, gen)
                    B, H = q.shape[0], q.shape[2]
                    out = torch.empty_like(q)
                    row = {"d": d, "L": L, "pad": pad, "causal": causal, "B": B, "H": H}
                    fl = flops(B, H, L, d, lens, causal)
                    ours = lambda: sigattn_ctypes.forward(
                        lib, q, k, v, out, causal=bool(causal), seq_lens_q=lens,
                        seq_lens_k=lens, trust_lengths=True)
                    ours()
                    torch.cuda.synchronize()
                    row["sigattn"] = fl / time_ms(ours) / 1e9
                    if tsig is not None:
                        if lens is None:
                            theirs = lambda: tsig.sigmoid_attention(q, k, v, is_causal=bool(causal))
                        else:
                            theirs = lambda: tsig.sigmoid_attention_padded(
                                q, k, v, seq_lens_k=lens, seq_lens_q=lens,
                                is_causal=bool(causal))
                        ref = theirs()
                        row["err_vs_triton"] = rel_l2(out, ref, lens)
                        row["triton"] = fl / time_ms(theirs) / 1e9
                    if args.backward:
                        time_backward(lib, row, q, k, v, lens, causal, fl * 2.5, tsig)
                    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
                    dense_fl = flops(B, H, L, d, None, causal)
                    for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION),
                                          ("flash", SDPBackend.FLASH_ATTENTION)):
                        if name not in peers or lens is not None:
                            continue
                        try:
                            with sdpa_kernel(backend):
                                fn = lambda: F.scaled_dot_product_attention(
                                    qt, kt, vt, is_causal=bool(causal))
                                fn()
                                row[name] = dense_fl / time_ms(fn) / 1e9
                        except RuntimeError as e:
                            print(f"{name} unavailable for d={d} L={L}: {e}", file=sys.stderr)
                    rows.append(row)
                    print(format_row(row), flush=True)
                    write_csv(rows, args.csv)  # a run cut short keeps what it measured
                    del q, k, v, out
                    torch.cuda.empty_cache()

    print_table(rows)
    plot(rows, args.png, args.dtype)


def time_backward(lib, row, q, k, v, lens, causal, flops_bwd, tsig):
    """Times the backward call alone (FLOPs = 2.5 x forward) for sigattn and TritonSigmoid."""
    dout = torch.randn_like(q)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    ours = lambda: sigattn_ctypes.backward(lib, q, k, v, dout, dq, dk, dv, causal=bool(causal),
                                           seq_lens_q=lens, seq_lens_k=lens)
    ours()
    torch.cuda.synchronize()
    row["sigattn_bwd"] = flops_bwd / time_ms(ours) / 1e9
    fast = lambda: sigattn_ctypes.backward(lib, q, k, v, dout, dq, dk, dv, causal=bool(causal),
                                           seq_lens_q=lens, seq_lens_k=lens, deterministic=False)
    fast()
    torch.cuda.synchronize()
    row["sigattn_bwd_fast"] = flops_bwd / time_ms(fast) / 1e9
    if tsig is None:
        return
    qg, kg, vg = (x.detach().requires_grad_(True) for x in (q, k, v))
    if lens is None:
        out = tsig.sigmoid_attention(qg, kg, vg, is_causal=bool(causal))
    else:
        out = tsig.sigmoid_attention_padded(qg, kg, vg, seq_lens_k=lens, seq_lens_q=lens,
                                            is_causal=bool(causal))
    theirs = lambda: torch.autograd.grad(out, (qg, kg, vg), dout, retain_graph=True)
    ref = theirs()
    row["dq_err_vs_triton"] = rel_l2(dq, ref[0], lens)
    row["triton_bwd"] = flops_bwd / time_ms(theirs) / 1e9


if __name__ == "__main__":
    main()
