"""Weak scaling of sigattn.distributed on N GPUs: each rank's throughput with a sequence N times
the per-GPU length, against the single-GPU rate at the per-GPU length measured in the same run.

Run under torchrun, one process per GPU:
    torchrun --nproc-per-node 2 bench/context_parallel.py --per-gpu 16384,32768 --csv cp.csv
For each per-GPU length and mask: sigmoid_attention on one GPU at that length (every rank, its
own GPU; rank 0 reports), then ring_attention (zigzag shards when causal) and ulysses_attention
over the whole sequence, forward and forward + backward. TFLOPS per GPU count the visible FLOPs
of the whole sequence divided by N (4 * B * H * L^2 * D for the forward, half of it causal; the
backward 2.5 times the forward). Times are medians of CUDA-event timings; rank 0 writes CSV.
"""

import argparse
import csv
import os
import statistics

import torch
import torch.distributed as dist

import sigattn
from sigattn import distributed

REPETITIONS = 10


def median_ms(fn):
    for _ in range(2):
        fn()
    times = []
    for _ in range(REPETITIONS):
        dist.barrier()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    # The slowest rank bounds the step.
    slowest = torch.tensor([statistics.median(times)], device="cuda")
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return slowest.item()


def timed(attention, tensors, grad):
    """(forward ms, forward + backward ms) of attention(*tensors)."""
    leaves = [x.detach().requires_grad_() for x in tensors]

    def forward():
        with torch.no_grad():
            attention(*leaves)

    def training_step():
        attention(*leaves).backward(grad)

    return median_ms(forward), median_ms(training_step)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-gpu", default="16384,32768", help="sequence length per GPU")
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--causal", default="0,1")
    parser.add_argument("--csv", default="context_parallel.csv")
    args = parser.parse_args()

    dist.init_process_group("nccl")
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    world, rank = dist.get_world_size(), dist.get_rank()
    rows = []
    for per_gpu in (int(x) for x in args.per_gpu.split(",")):
        for causal in (bool(int(x)) for x in args.causal.split(",")):
            length = per_gpu * world
            shape = (args.batch, per_gpu, args.heads, args.d)
            local = [torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
            single_flops = 4 * args.batch * args.heads * per_gpu ** 2 * args.d / (2 if causal
                                                                                   else 1)
            per_rank_flops = 4 * args.batch * args.heads * length ** 2 * args.d / (
                2 if causal else 1) / world
            single = timed(lambda q, k, v: sigattn.sigmoid_attention(q, k, v, is_causal=causal),
                           local[:3], local[3])
            row = {"gpus": world, "per_gpu": per_gpu, "causal": int(causal),
                   "single_fwd_tflops": single_flops / single[0] / 1e9,
                   "single_step_tflops": 3.5 * single_flops / single[1] / 1e9}
            methods = {
                "ring": lambda q, k, v: distributed.ring_attention(q, k, v, is_causal=causal),
                "ulysses": lambda q, k, v: distributed.ulysses_attention(q, k, v,
                                                                         is_causal=causal)}
            for name, method in methods.items():
                if name == "ulysses" and args.heads % world != 0:
                    continue
                forward_ms, step_ms = timed(method, local[:3], local[3])
                row[f"{name}_fwd_tflops"] = per_rank_flops / forward_ms / 1e9
                row[f"{name}_step_tflops"] = 3.5 * per_rank_flops / step_ms / 1e9
                row[f"{name}_step_vs_single"] = row[f"{name}_step_tflops"] / row[
                    "single_step_tflops"]
            rows.append(row)
            if rank == 0:
                print(", ".join(f"{key} {value:.3g}" if isinstance(value, float) else
                                f"{key} {value}" for key, value in row.items()), flush=True)
    if rank == 0:
        keys = list(dict.fromkeys(key for row in rows for key in row))
        with open(args.csv, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
