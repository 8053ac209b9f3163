"""Forward and backward benchmark of sigattn against its peers, in one process on one GPU, on the same inputs.

Peers: TritonSigmoid (PyPI `triton-sigmoid`: dense and padded kernels) and torch SDPA with the
cuDNN and flash backends (softmax, speed-of-light references). Protocol of ../shared
BENCHMARKS.md: 16,384 tokens per batch, hidden 2,048 (B = 16384 / L, H = 2048 / d), BTHD,
random-normal inputs, padding p draws each length uniformly from [L(1-p), L]; FLOPs 4·B·H·L²·d
(padded: 4·H·d·Σ len²); the median of triton.testing.do_bench (L2 flushed between reps).
With --step 1 (the default) also the training step of attention: the forward with inputs that
require grad and the backward of its output, through the torch op `sigattn.sigmoid_attention` with
its defaults against torch SDPA's cuDNN and flash backends (TFLOPS count 3.5 x the forward FLOPs).
Prints a table with ratios, writes CSV (after every shape) and a PNG plot (report.py).

--window L,R runs every shape with a sliding window (L keys left of the diagonal, R right; -1 is
unbounded), counting the visible (query, key) pairs only; the peers have no window and are left out.
--lengths replaces the sweep by one batch of heavy-tailed lengths like single-cell data (lognormal,
clipped to --len-range, drawn with --seed until they sum to --tokens): packed varlen and the same
batch padded to its longest, against TritonSigmoid's padded kernel and against sigattn's dense rate
at the batch's FLOP-weighted length sum(len^3) / sum(len^2), all in the same run; TFLOPS count the
visible FLOPs only.
"""

import argparse
import csv
import math
import random
import sys

from report import format_row, plot, print_table, write_csv

torch = triton = sigattn_ctypes = F = sigattn = None


def import_gpu_modules():
    """torch, triton and the library's bindings, imported once the arguments are parsed, so that
    --help runs on a machine without them."""
    global torch, triton, sigattn_ctypes, F, sigattn
    import torch
    import torch.nn.functional as F
    import triton.testing
    import sigattn
    import sigattn_ctypes

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


def visible_pairs(length, causal, window):
    """(query, key) pairs a sequence of `length` queries and keys sees under the masks."""
    left, right = window if window is not None else (-1, -1)
    if causal:
        right = 0 if right < 0 else min(right, 0)
    pairs = 0
    for row in range(length):
        lo = max(0, row - left) if left >= 0 else 0
        hi = min(length - 1, row + right) if right >= 0 else length - 1
        pairs += max(0, hi - lo + 1)
    return pairs


def visible_flops(lengths, H, d, causal, window):
    """Forward FLOPs of the visible pairs: 4·H·d per pair (QK^T and PV)."""
    return 4.0 * H * d * sum(visible_pairs(n, causal, window) for n in lengths)


def parse_window(text):
    if text is None:
        return None
    left, right = parse_ints(text)
    return left, right


def cell_lengths(tokens, low, high, seed, median=700, sigma=0.9):
    """Lognormal lengths (median `median`, shape sigma), clipped to [low, high], drawn until they sum
    to at least `tokens`: a few long sequences among many short ones, like cells in single-cell
    data."""
    draw = random.Random(seed)
    lengths = []
    while sum(lengths) < tokens:
        lengths.append(int(min(high, max(low, draw.lognormvariate(math.log(median), sigma)))))
    return lengths


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
    parser.add_argument("--step", type=int, default=1, choices=(0, 1),
                        help="also time the training step through the torch op (0/1)")
    parser.add_argument("--window", default=None, metavar="L,R",
                        help="sliding window: keys left and right of the diagonal (-1: unbounded)")
    parser.add_argument("--lengths", action="store_true",
                        help="one heavy-tailed batch of lengths (varlen, padded, dense at the "
                             "FLOP-weighted length) instead of the --L/--pad sweep")
    parser.add_argument("--tokens", type=int, default=24576, help="--lengths: tokens per batch")
    parser.add_argument("--len-range", default="128,4096", metavar="LOW,HIGH",
                        help="--lengths: clip the lengths to this range")
    args = parser.parse_args()
    window = parse_window(args.window)
    import_gpu_modules()

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

    seed = args.seed if args.seed is not None else torch.seed() % (2**31)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"triton {triton.__version__}, dtype {args.dtype}, seed {seed}")

    if args.lengths:
        low, high = parse_ints(args.len_range)
        run_lengths(lib, args, dtype, gen, tsig, window, cell_lengths(args.tokens, low, high, seed))
        return

    if window is not None:
        peers = set()
        tsig = None
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
                    if window is not None:
                        lengths = [L] * B if lens is None else lens.tolist()
                        fl = visible_flops(lengths, H, d, bool(causal), window)
                    ours = lambda: sigattn_ctypes.forward(
                        lib, q, k, v, out, causal=bool(causal), seq_lens_q=lens,
                        seq_lens_k=lens, trust_lengths=True, window=window)
                    ours()
                    torch.cuda.synchronize()
                    row["sigattn"] = fl / time_ms(ours) / 1e9
                    # TritonSigmoid's kernels take power-of-two head dims only.
                    triton_peer = tsig if d & (d - 1) == 0 else None
                    if triton_peer is not None:
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
                        time_backward(lib, row, q, k, v, lens, causal, fl * 2.5, triton_peer,
                                      window)
                    if args.step:
                        ours_step = lambda a, b, c: sigattn.sigmoid_attention(
                            a, b, c, is_causal=bool(causal), seq_lens_q=lens, seq_lens_k=lens,
                            trust_lengths=True, window=window)
                        row["sigattn_step"] = 3.5 * fl / time_step(ours_step, q, k, v) / 1e9
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
                                if args.backward:
                                    row[name + "_bwd"] = 2.5 * dense_fl / time_sdpa_backward(
                                        qt, kt, vt, bool(causal)) / 1e9
                                if args.step:
                                    theirs_step = lambda a, b, c: F.scaled_dot_product_attention(
                                        a, b, c, is_causal=bool(causal))
                                    row[name + "_step"] = 3.5 * dense_fl / time_step(
                                        theirs_step, qt, kt, vt) / 1e9
                        except RuntimeError as e:
                            print(f"{name} unavailable for d={d} L={L}: {e}", file=sys.stderr)
                    rows.append(row)
                    print(format_row(row), flush=True)
                    write_csv(rows, args.csv)  # a run cut short keeps what it measured
                    del q, k, v, out
                    torch.cuda.empty_cache()

    print_table(rows)
    plot(rows, args.png, args.dtype)


def time_backward(lib, row, q, k, v, lens, causal, flops_bwd, tsig, window=None):
    """Times the backward call alone (FLOPs = 2.5 x forward) for sigattn and TritonSigmoid."""
    dout = torch.randn_like(q)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    ours = lambda: sigattn_ctypes.backward(lib, q, k, v, dout, dq, dk, dv, causal=bool(causal),
                                           seq_lens_q=lens, seq_lens_k=lens, window=window)
    ours()
    torch.cuda.synchronize()
    row["sigattn_bwd"] = flops_bwd / time_ms(ours) / 1e9
    fast = lambda: sigattn_ctypes.backward(lib, q, k, v, dout, dq, dk, dv, causal=bool(causal),
                                           seq_lens_q=lens, seq_lens_k=lens, deterministic=False,
                                           window=window)
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


def time_sdpa_backward(q, k, v, causal):
    """Milliseconds of the backward of torch SDPA (softmax) with the backend selected around it."""
    qg, kg, vg = (x.detach().requires_grad_(True) for x in (q, k, v))
    out = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
    dout = torch.randn_like(out)
    fn = lambda: torch.autograd.grad(out, (qg, kg, vg), dout, retain_graph=True)
    fn()
    return time_ms(fn)


def time_step(attention, q, k, v):
    """Milliseconds of one training step of attention(q, k, v): the forward on inputs that require
    grad, then the backward of its output."""
    qg, kg, vg = (x.detach().requires_grad_(True) for x in (q, k, v))
    dout = torch.randn_like(q)

    def step():
        torch.autograd.grad(attention(qg, kg, vg), (qg, kg, vg), dout)

    step()
    torch.cuda.synchronize()
    return time_ms(step)


def time_sigattn(lib, row, key, q, k, v, flops_fwd, backward, **call):
    """Forward and deterministic backward TFLOPS of one sigattn call into row[key], row[key_bwd]."""
    out = torch.empty_like(q)
    fwd = lambda: sigattn_ctypes.forward(lib, q, k, v, out, trust_lengths=True, **call)
    fwd()
    torch.cuda.synchronize()
    row[key] = flops_fwd / time_ms(fwd) / 1e9
    if backward:
        dout = torch.randn_like(q)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        bwd = lambda: sigattn_ctypes.backward(lib, q, k, v, dout, dq, dk, dv, **call)
        bwd()
        torch.cuda.synchronize()
        row[key + "_bwd"] = 2.5 * flops_fwd / time_ms(bwd) / 1e9


LENGTHS_KEYS = ["d", "causal", "window", "sequences", "tokens", "max_len", "flop_len",
                "varlen", "padded", "dense", "triton", "varlen_bwd", "padded_bwd", "dense_bwd",
                "triton_bwd"]


def run_lengths(lib, args, dtype, gen, tsig, window, lengths):
    """The --lengths mode: one batch of `lengths`, packed and padded, against the dense rate at its
    FLOP-weighted length and TritonSigmoid's padded kernel (no window only)."""
    n, longest = len(lengths), max(lengths)
    flop_len = sum(x ** 3 for x in lengths) / sum(x * x for x in lengths)
    print(f"{n} sequences, {sum(lengths)} tokens, longest {longest}, "
          f"FLOP-weighted length {flop_len:.0f}; lengths {sorted(lengths, reverse=True)}")
    lens = torch.tensor(lengths, device="cuda", dtype=torch.int32)
    cu_seqlens = torch.zeros(n + 1, device="cuda", dtype=torch.int32)
    cu_seqlens[1:] = torch.cumsum(lens, 0)
    # The dense shape at the FLOP-weighted length, rounded to a whole 128-row block, with about
    # as many tokens as the batch.
    dense_len = max(128, int(round(flop_len / 128)) * 128)
    dense_batch = max(1, sum(lengths) // dense_len)
    rows = []
    for d in parse_ints(args.d):
        H = HIDDEN // d
        for causal in parse_ints(args.causal):
            row = {"d": d, "causal": causal, "window": args.window or "", "sequences": n,
                   "tokens": sum(lengths), "max_len": longest, "flop_len": round(flop_len)}
            masks = {"causal": bool(causal), "window": window}
            fl = visible_flops(lengths, H, d, bool(causal), window)
            packed = [torch.randn(1, sum(lengths), H, d, device="cuda", dtype=dtype,
                                  generator=gen) for _ in range(3)]
            time_sigattn(lib, row, "varlen", *packed, fl, args.backward,
                         packed=(cu_seqlens, longest), **masks)
            padded = [torch.zeros(n, longest, H, d, device="cuda", dtype=dtype) for _ in range(3)]
            for dst, src in zip(padded, packed):
                for b, (start, length) in enumerate(zip(cu_seqlens.tolist(), lengths)):
                    dst[b, :length] = src[0, start:start + length]
            time_sigattn(lib, row, "padded", *padded, fl, args.backward, seq_lens_q=lens,
                         seq_lens_k=lens, **masks)
            dense = [torch.randn(dense_batch, dense_len, H, d, device="cuda", dtype=dtype,
                                 generator=gen) for _ in range(3)]
            time_sigattn(lib, row, "dense", *dense,
                         visible_flops([dense_len] * dense_batch, H, d, bool(causal), window),
                         args.backward, **masks)
            if tsig is not None and window is None:
                q, k, v = (x.detach().requires_grad_(True) for x in padded)
                theirs = lambda: tsig.sigmoid_attention_padded(
                    q, k, v, seq_lens_k=lens, seq_lens_q=lens, is_causal=bool(causal))
                out = theirs()
                row["triton"] = fl / time_ms(theirs) / 1e9
                if args.backward:
                    dout = torch.randn_like(out)
                    grads = lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)
                    row["triton_bwd"] = 2.5 * fl / time_ms(grads) / 1e9
            rows.append(row)
            print(format_lengths_row(row), flush=True)
            with open(args.csv, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=LENGTHS_KEYS)
                writer.writeheader()
                writer.writerows(rows)
            del packed, padded, dense
            torch.cuda.empty_cache()


def format_lengths_row(r):
    """TFLOPS of each form and, in parentheses, its share of the dense rate (sigattn's ratio to
    TritonSigmoid for the peer)."""
    parts = [f"d={r['d']:<3} causal={r['causal']} window={r['window'] or '-'}"]
    for suffix, what in (("", "fwd"), ("_bwd", "bwd")):
        dense = r.get("dense" + suffix)
        cells = [f"dense@{r['flop_len']} {dense:6.1f}" if dense else ""]
        for form in ("varlen", "padded"):
            if form + suffix in r:
                cells.append(f"{form} {r[form + suffix]:6.1f} ({r[form + suffix] / dense:.0%})")
        if "triton" + suffix in r:
            cells.append(f"triton padded {r['triton' + suffix]:6.1f} "
                         f"(varlen {r['varlen' + suffix] / r['triton' + suffix]:.2f}x)")
        if dense:
            parts.append(f"{what}: " + ", ".join(c for c in cells if c))
    return " | ".join(parts)


if __name__ == "__main__":
    main()
