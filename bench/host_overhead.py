"""Host overhead of the torch op: training-step costs per call and the first call of a process.

Steps mode: for (d, L) at 16,384 tokens and hidden 2,048 (B = 16384 / L, H = 2048 / d), bf16,
BTHD, each path's GPU-timed µs (median of triton.testing.do_bench) and host µs (wall time of 100
back-to-back calls without synchronization / 100) for the forward and for forward + backward
(torch.autograd.grad). Paths: the C ABI called directly with preallocated outputs (the kernels
alone), sigattn.sigmoid_attention without and with inputs that require grad, the custom op
sigattn::forward called eagerly (what torch.compile traces; its dispatch cost), and torch SDPA on
cuDNN (softmax) without and with grad.

First-call mode: fresh processes, each timing `import torch`, torch's own CUDA start (CUDA init,
a tiny op, a tiny backward), `import sigattn`, then the first sigattn forward of a new shape and
the first forward + backward, each synchronized; once with an empty database (SIGATTN_DB a new
file) and once with the database the first process left (warm).

Run with the sigattn package importable (installed, or PYTHONPATH=python with SIGATTN_LIBRARY):
    python3 bench/host_overhead.py --csv host.csv --first-call-csv first_call.csv
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time

TOKENS = 16384
HIDDEN = 2048
HOST_CALLS = 100


def parse_shapes(text):
    """ "128x512,64x1024" -> [(128, 512), (64, 1024)] as (head dim, sequence length)."""
    return [tuple(int(x) for x in item.split("x")) for item in text.split(",") if item]


def host_us(fn, calls=HOST_CALLS):
    """Wall time per call of `calls` back-to-back calls, the GPU left to run behind."""
    import torch
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def gpu_us(fn):
    import triton.testing
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3


def measure(path, d, L, forward, leaves=None, grad_out=None):
    """One CSV row: forward GPU and host µs, and with `leaves` forward + backward."""
    import torch
    forward()
    row = {"d": d, "L": L, "path": path, "fwd_gpu_us": gpu_us(forward),
           "fwd_host_us": host_us(forward)}
    if leaves is not None:
        def step():
            torch.autograd.grad(forward(), leaves, grad_out)

        step()
        row["fwd_bwd_gpu_us"] = gpu_us(step)
        row["fwd_bwd_host_us"] = host_us(step)
    return row


def step_rows(d, L, with_op):
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import sigattn
    from sigattn import _ops

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import sigattn_ctypes

    B, H = TOKENS // L, HIDDEN // d
    q, k, v = (torch.randn(B, L, H, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out = torch.empty_like(q)
    grad_out = torch.randn_like(q)
    leaves = [x.detach().requires_grad_(True) for x in (q, k, v)]
    lib = sigattn_ctypes.load()
    rows = [measure("C ABI, kernels alone", d, L, lambda: sigattn_ctypes.forward(lib, q, k, v, out))]
    rows.append(measure("sigattn, no grad", d, L, lambda: sigattn.sigmoid_attention(q, k, v)))
    rows.append(measure("sigattn, requires grad", d, L,
                        lambda: sigattn.sigmoid_attention(*leaves), leaves, grad_out))
    if with_op and sigattn.REGISTERED_AS_TORCH_OP:
        inputs = (None, None, None, None, None, L, L, False, -1, -1, None, None, False, False, True)
        rows.append(measure("sigattn::forward custom op, requires grad", d, L,
                            lambda: _ops.forward_op(*leaves, *inputs), leaves, grad_out))
    bhtd = [x.transpose(1, 2).contiguous() for x in (q, k, v)]
    bhtd_leaves = [x.detach().requires_grad_(True) for x in bhtd]
    bhtd_grad = grad_out.transpose(1, 2).contiguous()

    def cudnn(tensors):
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return F.scaled_dot_product_attention(*tensors)

    rows.append(measure("torch SDPA cuDNN, no grad", d, L, lambda: cudnn(bhtd)))
    rows.append(measure("torch SDPA cuDNN, requires grad", d, L, lambda: cudnn(bhtd_leaves),
                        bhtd_leaves, bhtd_grad))
    for row in rows:
        row.update(B=B, H=H)
    return rows


STEP_KEYS = ["d", "L", "B", "H", "path", "fwd_gpu_us", "fwd_host_us", "fwd_bwd_gpu_us",
             "fwd_bwd_host_us"]
FIRST_CALL_KEYS = ["database", "d", "L", "torch_import_s", "torch_cuda_start_s",
                   "sigattn_import_s", "first_forward_s", "first_forward_backward_s"]


def write_csv(rows, keys, path):
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: (f"{row[key]:.4g}" if isinstance(row.get(key), float)
                                   else row.get(key, "")) for key in keys})


def print_steps(rows):
    print("\n| d, L | path | forward: GPU µs / host µs | forward + backward: GPU µs / host µs |")
    print("|---|---|---|---|")
    for r in rows:
        backward = (f"{r['fwd_bwd_gpu_us']:.0f} / {r['fwd_bwd_host_us']:.0f}"
                    if "fwd_bwd_gpu_us" in r else "—")
        print(f"| {r['d']}, {r['L']} | {r['path']} | {r['fwd_gpu_us']:.0f} / "
              f"{r['fwd_host_us']:.0f} | {backward} |")


def first_call_child(d, L):
    """Runs in a fresh process; prints one JSON object of seconds."""
    times = {}
    start = time.perf_counter()
    import torch
    times["torch_import_s"] = time.perf_counter() - start

    start = time.perf_counter()
    torch.cuda.init()
    x = torch.ones(8, device="cuda", requires_grad=True)
    torch.autograd.grad(x * 2.0, x, torch.ones_like(x))
    torch.cuda.synchronize()
    times["torch_cuda_start_s"] = time.perf_counter() - start
    B, H = TOKENS // L, HIDDEN // d
    q, k, v = (torch.randn(B, L, H, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    grad_out = torch.randn_like(q)
    torch.cuda.synchronize()

    start = time.perf_counter()
    import sigattn
    times["sigattn_import_s"] = time.perf_counter() - start

    start = time.perf_counter()
    sigattn.sigmoid_attention(q, k, v)
    torch.cuda.synchronize()
    times["first_forward_s"] = time.perf_counter() - start

    leaves = [x.detach().requires_grad_(True) for x in (q, k, v)]
    start = time.perf_counter()
    torch.autograd.grad(sigattn.sigmoid_attention(*leaves), leaves, grad_out)
    torch.cuda.synchronize()
    times["first_forward_backward_s"] = time.perf_counter() - start
    print(json.dumps(times))


def first_call_rows(d, L):
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        environment = dict(os.environ, SIGATTN_DB=os.path.join(directory, "first_call.db"))
        for database in ("empty", "warm"):
            result = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--first-call-child", f"{d}x{L}"],
                env=environment, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"first-call process failed:\n{result.stderr}")
            row = json.loads(result.stdout.strip().splitlines()[-1])
            row.update(database=database, d=d, L=L)
            rows.append(row)
    return rows


def print_first_calls(rows):
    print("\n| database | d, L | import torch | torch CUDA start | import sigattn | first forward "
          "| first forward + backward |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['database']} | {r['d']}, {r['L']} | {r['torch_import_s']:.2f} s | "
              f"{r['torch_cuda_start_s']:.2f} s | {r['sigattn_import_s']:.3f} s | "
              f"{r['first_forward_s']:.3f} s | {r['first_forward_backward_s']:.3f} s |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["steps", "first-call", "all"], default="all")
    parser.add_argument("--shapes", default="128x512,128x1024,64x1024",
                        help="head dim x sequence length, comma-separated (steps mode)")
    parser.add_argument("--first-call-shape", default="128x512",
                        help="head dim x sequence length of the first call")
    parser.add_argument("--csv", default="host_overhead.csv")
    parser.add_argument("--first-call-csv", default="first_call.csv")
    parser.add_argument("--no-custom-op", action="store_true",
                        help="leave out the eager call of the custom op sigattn::forward")
    parser.add_argument("--first-call-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.first_call_child:
        first_call_child(*parse_shapes(args.first_call_child)[0])
        return

    if args.mode in ("first-call", "all"):
        # Before this process touches CUDA or imports sigattn, so the children start cold.
        first = first_call_rows(*parse_shapes(args.first_call_shape)[0])
        write_csv(first, FIRST_CALL_KEYS, args.first_call_csv)
        print_first_calls(first)
    if args.mode in ("steps", "all"):
        import torch
        print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
        rows = []
        for d, L in parse_shapes(args.shapes):
            shape_rows = step_rows(d, L, not args.no_custom_op)
            rows += shape_rows
            write_csv(rows, STEP_KEYS, args.csv)  # a run cut short keeps what it measured
            print_steps(shape_rows)
            torch.cuda.empty_cache()
        print_steps(rows)


if __name__ == "__main__":
    main()
