"""Decode-step benchmark of sigattn.sigmoid_attention_with_kvcache against the HBM limit and torch SDPA, in one process on one GPU.

One decode step per sequence (one query row, one new token appended) against contiguous and paged
caches, GQA 32:8, d = 128 by default. For each batch and context length it reports the step's
time, the K/V bytes it reads per second (2 x batch x context x heads_kv x d x element bytes over
the time), that rate against the HBM rate of a device-to-device copy of the same bytes measured in
the same run (the physical limit: the copy reads and writes each byte, so its HBM rate is twice
the bytes over its time), and torch SDPA (softmax, its cuDNN or flash backend)
on the same contiguous cache. Times are medians of CUDA-event timings over repeated calls, with a
buffer larger than L2 written between them. Optionally the host time of one Python call and the
replay of a CUDA graph holding a 32-layer decode step. Writes CSV.
"""

import argparse
import csv
import statistics
import time

import torch
import torch.nn.functional as F

import sigattn

REPETITIONS = 30


def parse_ints(text):
    return [int(x) for x in text.split(",") if x]


def median_ms(fn, flush):
    """The median of REPETITIONS CUDA-event timings of fn(), after warm-up, L2 flushed before each."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(REPETITIONS):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def make_cache(layout, batch, context, heads_kv, dim, dtype):
    """The cache tensors of a layout ("contiguous" or "pagedN"), random, with room for one more
    token, a shuffled block table for a paged one, and the lengths before the append."""
    capacity = context + 1
    lens = torch.full((batch,), context - 1, device="cuda", dtype=torch.int32)
    if layout == "contiguous":
        shape = (batch, capacity, heads_kv, dim)
        return [torch.randn(shape, device="cuda", dtype=dtype) for _ in range(2)], None, lens
    block = int(layout[len("paged"):])
    blocks_per_sequence = (capacity + block - 1) // block
    table = torch.randperm(batch * blocks_per_sequence, device="cuda").view(
        batch, blocks_per_sequence).to(torch.int32)
    shape = (batch * blocks_per_sequence, block, heads_kv, dim)
    return [torch.randn(shape, device="cuda", dtype=dtype) for _ in range(2)], table, lens


def sdpa_step(q, caches, context):
    """torch SDPA (softmax) of the same query against the first `context` cache positions."""
    query = q.transpose(1, 2)
    key, value = (c[:, :context].transpose(1, 2) for c in caches)
    return lambda: F.scaled_dot_product_attention(query, key, value, enable_gqa=True)


def measure(args, layout, batch, context, flush):
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    caches, table, lens = make_cache(layout, batch, context, args.hkv, args.d, dtype)
    q = torch.randn(batch, 1, args.hq, args.d, device="cuda", dtype=dtype)
    new = [torch.randn(batch, 1, args.hkv, args.d, device="cuda", dtype=dtype) for _ in range(2)]

    def step():
        return sigattn.sigmoid_attention_with_kvcache(q, caches[0], caches[1], lens, k_new=new[0],
                                                      v_new=new[1], block_table=table,
                                                      trust_lengths=True)

    kv_bytes = 2 * batch * context * args.hkv * args.d * q.element_size()
    source = torch.empty(kv_bytes, device="cuda", dtype=torch.uint8)
    target = torch.empty_like(source)
    row = {"layout": layout, "batch": batch, "context": context, "kv_bytes": kv_bytes,
           "sigattn_ms": median_ms(step, flush),
           "copy_ms": median_ms(lambda: target.copy_(source), flush)}
    row["sigattn_gbs"] = kv_bytes / row["sigattn_ms"] / 1e6
    # A copy moves each byte through HBM twice: read, then written.
    row["copy_gbs"] = 2 * kv_bytes / row["copy_ms"] / 1e6
    row["fraction_of_copy"] = row["sigattn_gbs"] / row["copy_gbs"]
    if layout == "contiguous" and "sdpa" in args.peers:
        try:
            row["sdpa_ms"] = median_ms(sdpa_step(q, caches, context), flush)
        except (RuntimeError, TypeError) as error:
            print(f"torch SDPA failed: {error}")
    if args.host:
        torch.cuda.synchronize()
        calls = 200
        begin = time.perf_counter()
        for _ in range(calls):
            step()
        row["host_us"] = (time.perf_counter() - begin) / calls * 1e6
        torch.cuda.synchronize()
    return row


def graph_replay_ms(args, layers, flush):
    """One CUDA graph holding a decode step of `layers` layers (each its own cache), replayed."""
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    batch, context = args.graph_batch, args.graph_context
    steps = []
    for _ in range(layers):
        caches, table, lens = make_cache("contiguous", batch, context, args.hkv, args.d, dtype)
        q = torch.randn(batch, 1, args.hq, args.d, device="cuda", dtype=dtype)
        new = [torch.randn(batch, 1, args.hkv, args.d, device="cuda", dtype=dtype)
               for _ in range(2)]
        steps.append((q, caches, lens, new))

    def decode_step():
        for q, caches, lens, new in steps:
            sigattn.sigmoid_attention_with_kvcache(q, caches[0], caches[1], lens, k_new=new[0],
                                                   v_new=new[1])

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        decode_step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode_step()
    return median_ms(graph.replay, flush)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", default="1,4,16,64,128")
    parser.add_argument("--context", default="1024,4096,16384,65536,131072")
    parser.add_argument("--layout", default="contiguous,paged16,paged256")
    parser.add_argument("--hq", type=int, default=32)
    parser.add_argument("--hkv", type=int, default=8)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--peers", default="sdpa", help="sdpa or none")
    parser.add_argument("--max-gib", type=float, default=40.0,
                        help="skip shapes whose K/V cache exceeds this many GiB")
    parser.add_argument("--host", type=int, default=1, help="also time one call on the host")
    parser.add_argument("--graph-layers", type=int, default=32,
                        help="replay a CUDA graph of this many decode layers (0: skip)")
    parser.add_argument("--graph-batch", type=int, default=16)
    parser.add_argument("--graph-context", type=int, default=4096)
    parser.add_argument("--csv", default="decode.csv")
    args = parser.parse_args()

    flush = torch.empty(256 * 1024 * 1024, device="cuda", dtype=torch.uint8)
    rows = []
    keys = ["layout", "batch", "context", "kv_bytes", "sigattn_ms", "sigattn_gbs", "copy_ms",
            "copy_gbs", "fraction_of_copy", "sdpa_ms", "host_us"]
    print(f"{torch.cuda.get_device_name()}, {args.dtype}, GQA {args.hq}:{args.hkv}, d {args.d}")
    for layout in args.layout.split(","):
        for batch in parse_ints(args.batch):
            for context in parse_ints(args.context):
                gib = 2 * batch * (context + 1) * args.hkv * args.d * 2 / 2**30
                if gib > args.max_gib:
                    continue
                row = measure(args, layout, batch, context, flush)
                rows.append(row)
                sdpa = f", SDPA {row['sdpa_ms']:.3f} ms" if "sdpa_ms" in row else ""
                print(f"{layout:>10} B={batch:<4} ctx={context:<7} {row['sigattn_ms']:.3f} ms "
                      f"{row['sigattn_gbs']:.0f} GB/s = {row['fraction_of_copy']:.0%} of copy "
                      f"({row['copy_gbs']:.0f} GB/s){sdpa}")
                with open(args.csv, "w", newline="") as file:
                    writer = csv.DictWriter(file, fieldnames=keys)
                    writer.writeheader()
                    for r in rows:
                        writer.writerow({k: r.get(k, "") for k in keys})
    if args.graph_layers > 0:
        ms = graph_replay_ms(args, args.graph_layers, flush)
        print(f"CUDA graph of {args.graph_layers} decode layers (B={args.graph_batch}, "
              f"ctx={args.graph_context}): {ms:.3f} ms per replay")


if __name__ == "__main__":
    main()
