"""Reporting of benchmark rows: the one-line summary, the Markdown tables, CSV and the PNG plot.

Needs no GPU and no torch. As a script it merges CSV files written by bench.py (one run cut short
by a time limit keeps the rows it wrote) into one table, CSV and plot:
    python3 report.py a.csv b.csv --csv all.csv --png all.png
"""

import argparse
import csv

CSV_KEYS = ["d", "L", "pad", "causal", "B", "H", "sigattn", "triton", "cudnn", "flash",
            "err_vs_triton", "sigattn_bwd", "sigattn_bwd_fast", "triton_bwd", "dq_err_vs_triton",
            "cudnn_bwd", "flash_bwd", "sigattn_step", "cudnn_step", "flash_step"]
INT_KEYS = {"d", "L", "pad", "causal", "B", "H"}


def format_row(r):
    parts = [f"d={r['d']:<3} L={r['L']:<5} pad={r['pad']:<2} causal={r['causal']}",
             f"sigattn {r['sigattn']:6.1f}"]
    for peer in ("triton", "cudnn", "flash"):
        if peer in r:
            parts.append(f"{peer} {r[peer]:6.1f} ({r['sigattn'] / r[peer]:.2f}x)")
    if "err_vs_triton" in r:
        parts.append(f"relL2 vs triton {r['err_vs_triton']:.1e}")
    if "sigattn_bwd" in r:
        parts.append(f"bwd sigattn {r['sigattn_bwd']:6.1f} (fast {r['sigattn_bwd_fast']:6.1f})")
    if "triton_bwd" in r:
        parts.append(f"bwd triton {r['triton_bwd']:6.1f} ({r['sigattn_bwd'] / r['triton_bwd']:.2f}x)"
                     f" dQ relL2 {r['dq_err_vs_triton']:.1e}")
    for peer in ("cudnn", "flash"):
        if peer + "_bwd" in r:
            parts.append(f"bwd {peer} {r[peer + '_bwd']:6.1f}"
                         f" (fast {r['sigattn_bwd_fast'] / r[peer + '_bwd']:.2f}x)")
    if "sigattn_step" in r:
        parts.append(f"step sigattn {r['sigattn_step']:6.1f}")
    for peer in ("cudnn", "flash"):
        if "sigattn_step" in r and peer + "_step" in r:
            parts.append(f"step {peer} {r[peer + '_step']:6.1f}"
                         f" ({r['sigattn_step'] / r[peer + '_step']:.2f}x)")
    return " | ".join(parts)


def print_table(rows):
    print("\nTFLOPS (forward; padded rows count valid FLOPs; ratio = sigattn / peer)")
    print("| d | L | pad | causal | sigattn | TritonSigmoid | ratio | cuDNN | ratio | flash | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [str(r["d"]), str(r["L"]), str(r["pad"]), str(r["causal"]), f"{r['sigattn']:.0f}"]
        for peer in ("triton", "cudnn", "flash"):
            if peer in r:
                cells += [f"{r[peer]:.0f}", f"{r['sigattn'] / r[peer]:.2f}"]
            else:
                cells += ["", ""]
        print("| " + " | ".join(cells) + " |")
    print_backward_table([r for r in rows if "sigattn_bwd" in r])
    print_step_table([r for r in rows if "sigattn_step" in r])


def print_backward_table(backward):
    if not backward:
        return
    print("\nTFLOPS (backward call, 2.5 x forward FLOPs; deterministic and fast modes; ratio = "
          "fast / peer)")
    print("| d | L | pad | causal | deterministic | fast | TritonSigmoid | ratio | cuDNN | ratio "
          "| flash | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in backward:
        cells = [str(r["d"]), str(r["L"]), str(r["pad"]), str(r["causal"]),
                 f"{r['sigattn_bwd']:.0f}", f"{r['sigattn_bwd_fast']:.0f}"]
        for peer in ("triton", "cudnn", "flash"):
            if peer + "_bwd" in r:
                cells += [f"{r[peer + '_bwd']:.0f}",
                          f"{r['sigattn_bwd_fast'] / r[peer + '_bwd']:.2f}"]
            else:
                cells += ["", ""]
        print("| " + " | ".join(cells) + " |")


def print_step_table(steps):
    if not steps:
        return
    print("\nTFLOPS (training step through the torch op: forward + backward, 3.5 x forward FLOPs; "
          "ratio = sigattn / peer)")
    print("| d | L | pad | causal | sigattn | cuDNN | ratio | flash | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in steps:
        cells = [str(r["d"]), str(r["L"]), str(r["pad"]), str(r["causal"]),
                 f"{r['sigattn_step']:.0f}"]
        for peer in ("cudnn", "flash"):
            if peer + "_step" in r:
                cells += [f"{r[peer + '_step']:.0f}", f"{r['sigattn_step'] / r[peer + '_step']:.2f}"]
            else:
                cells += ["", ""]
        print("| " + " | ".join(cells) + " |")


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_KEYS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CSV_KEYS})


def read_csv(path):
    """Rows as bench.py measured them: empty cells are absent keys. A file bench.py did not write
    raises ValueError naming the file, the row and the column."""
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [k for k in ("d", "L", "pad", "causal", "sigattn")
                   if k not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not a bench.py CSV, no column {', '.join(missing)}")
        for line, record in enumerate(reader, start=2):
            row = {}
            for key, value in record.items():
                if key not in CSV_KEYS:
                    raise ValueError(f"{path}:{line}: unknown column {key!r}")
                if value in ("", None):
                    continue
                try:
                    row[key] = int(value) if key in INT_KEYS else float(value)
                except ValueError:
                    raise ValueError(f"{path}:{line}: column {key!r} holds {value!r}, not a "
                                     f"{'whole number' if key in INT_KEYS else 'number'}") from None
            rows.append(row)
    return rows


def plot(rows, path, dtype):
    """Forward TFLOPS per head dim and padding; a second row of panels for the backward call."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = sorted({r["d"] for r in rows})
    pads = sorted({r["pad"] for r in rows})
    passes = [("forward", (("sigattn", "sigattn"), ("triton", "TritonSigmoid"),
                           ("cudnn", "SDPA cuDNN (softmax)"), ("flash", "SDPA flash")))]
    if any("sigattn_bwd" in r for r in rows):
        passes.append(("backward", (("sigattn_bwd_fast", "sigattn (fast)"),
                                    ("sigattn_bwd", "sigattn (deterministic)"),
                                    ("triton_bwd", "TritonSigmoid"))))
    panels = [(name, series, d) for name, series in passes for d in ds]
    fig, axes = plt.subplots(len(panels), len(pads), figsize=(5 * len(pads), 4 * len(panels)),
                             squeeze=False)
    for i, (name, series, d) in enumerate(panels):
        for j, pad in enumerate(pads):
            ax = axes[i][j]
            sel = sorted((r for r in rows if r["d"] == d and r["pad"] == pad and r["causal"] == 0),
                         key=lambda r: r["L"])
            for key, label in series:
                pts = [(r["L"], r[key]) for r in sel if key in r]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{name} {dtype}, d={d}, padding {pad}%")
            ax.set_xlabel("sequence length L")
            ax.set_ylabel("TFLOPS")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="CSV files written by bench.py")
    parser.add_argument("--csv", required=True, help="the merged CSV")
    parser.add_argument("--png", required=True, help="the plot")
    parser.add_argument("--dtype", default="bf16")
    args = parser.parse_args()
    try:
        rows = [row for path in args.inputs for row in read_csv(path)]
    except (OSError, ValueError) as e:
        parser.exit(2, f"report.py: {e}\n")
    rows.sort(key=lambda r: (r["pad"], r["d"], r["L"], r["causal"]))
    print_table(rows)
    write_csv(rows, args.csv)
    plot(rows, args.png, args.dtype)


if __name__ == "__main__":
    main()
