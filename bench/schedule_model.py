"""A model of the persistent grid's balance: how far the busiest CTA's work is above the mean for
the strided and the dynamic schedule of the sm90 forward and dq kernels. No GPU, no torch.

A work tile costs its K/V steps plus one (pipeline fill and epilogue); 132 CTAs; the strided
schedule deals every (row block, head, sequence) up to the longest sequence round robin (an empty
row block costs 0.05), the dynamic one hands out only row blocks with valid rows, each sequence's
longest first, to whichever CTA is free. Prints mean / busiest (1.0: perfect balance):
    python3 schedule_model.py
"""

import heapq

from bench import cell_lengths

CTAS = 132
HEADS = 16
BLOCK = 128  # block_m = block_n
EMPTY_COST = 0.05
FILL_COST = 1.0


def blocks(length):
    return -(-length // BLOCK)


def tile_cost(length, block, causal):
    keys = min(length, (block + 1) * BLOCK) if causal else length
    return blocks(keys) + FILL_COST


def strided(lengths, causal):
    """Costs in the strided order: blocks fastest (causal: last first), then heads, sequences."""
    longest = max(blocks(n) for n in lengths)
    costs = []
    for n in lengths:
        for _ in range(HEADS):
            for i in range(longest):
                block = longest - 1 - i if causal else i
                costs.append(tile_cost(n, block, causal) if block < blocks(n) else EMPTY_COST)
    load = [0.0] * CTAS
    for i, cost in enumerate(costs):
        load[i % CTAS] += cost
    return sum(load) / CTAS / max(load)


def dynamic(lengths, causal):
    """Costs in the dynamic order, each to the CTA that is free first."""
    costs = []
    for n in lengths:
        if causal:
            costs += [tile_cost(n, b, True) for b in reversed(range(blocks(n))) for _ in range(HEADS)]
        else:
            costs += [tile_cost(n, b, False) for _ in range(HEADS) for b in range(blocks(n))]
    free = [(0.0, cta) for cta in range(CTAS)]
    for cost in costs:
        t, cta = heapq.heappop(free)
        heapq.heappush(free, (t + cost, cta))
    ends = [t for t, _ in free]
    return sum(ends) / CTAS / max(ends)


def main():
    cases = [(f"cell lengths seed {seed}", cell_lengths(24576, 128, 4096, seed)) for seed in range(3)]
    cases += [("L = 4096, B = 4", [4096] * 4), ("L = 8192, B = 2", [8192] * 2),
              ("L = 2048, B = 8", [2048] * 8)]
    print("| batch | causal | strided | dynamic |")
    print("|---|---|---|---|")
    for name, lengths in cases:
        for causal in (False, True):
            print(f"| {name} | {int(causal)} | {strided(lengths, causal):.3f} | "
                  f"{dynamic(lengths, causal):.3f} |")


if __name__ == "__main__":
    main()
