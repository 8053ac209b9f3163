"""Serves a toy sigmoid-attention layer: a prefill of prompts of different lengths (packed, varlen)
that writes their keys and values into a paged KV cache, then decode steps that append one token
per sequence and attend to the cache, and finally a check that the last step equals attention
recomputed over the whole sequences. Usage: python3 prefill_decode.py [--steps 8]

The bias is one fixed scalar, -log(CONTEXT), in the prefill and at every step: a model trained with
a fixed bias -log(n) needs that same value at decode time (the default, -log of the current length,
would change with every step).
"""

import argparse
import math

import torch

import sigattn

HEADS_Q, HEADS_KV, HEAD_DIM, MODEL = 8, 2, 64, 256
BLOCK_SIZE, MAX_BLOCKS = 16, 8
CONTEXT = BLOCK_SIZE * MAX_BLOCKS  # positions per sequence
BIAS = -math.log(CONTEXT)


class ToyLayer(torch.nn.Module):
    """Projections of token vectors to queries, keys and values [..., heads, head_dim]."""

    def __init__(self):
        super().__init__()
        self.q = torch.nn.Linear(MODEL, HEADS_Q * HEAD_DIM, bias=False)
        self.kv = torch.nn.Linear(MODEL, 2 * HEADS_KV * HEAD_DIM, bias=False)

    def forward(self, x):
        q = self.q(x).unflatten(-1, (HEADS_Q, HEAD_DIM))
        k, v = self.kv(x).unflatten(-1, (2, HEADS_KV, HEAD_DIM)).unbind(-3)
        return q, k, v


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    device, dtype = "cuda", torch.bfloat16
    layer = ToyLayer().to(device, dtype)
    prompt_lens = [5, 40, 17]
    batch = len(prompt_lens)

    # The paged cache: every sequence's blocks somewhere in one pool, through its block table.
    num_blocks = batch * MAX_BLOCKS
    k_cache = torch.zeros(num_blocks, BLOCK_SIZE, HEADS_KV, HEAD_DIM, device=device, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    block_table = torch.randperm(num_blocks, device=device).view(batch, MAX_BLOCKS).int()

    # Prefill: the prompts packed into one varlen call, causal, their K/V scattered into the cache.
    tokens = [torch.randn(n, MODEL, device=device, dtype=dtype) for n in prompt_lens]
    with torch.no_grad():
        q, k, v = layer(torch.cat(tokens))
        cu_seqlens = torch.tensor([0] + prompt_lens, device=device).cumsum(0).int()
        sigattn.sigmoid_attention_varlen(q, k, v, cu_seqlens, cu_seqlens, max(prompt_lens),
                                         max(prompt_lens), is_causal=True, sigmoid_bias=BIAS)
        for b, n in enumerate(prompt_lens):
            positions = torch.arange(n, device=device)
            blocks = block_table[b, positions // BLOCK_SIZE].long()
            start = int(cu_seqlens[b])
            k_cache[blocks, positions % BLOCK_SIZE] = k[start:start + n]
            v_cache[blocks, positions % BLOCK_SIZE] = v[start:start + n]
    cache_seqlens = torch.tensor(prompt_lens, device=device, dtype=torch.int32)

    # Decode: one new token per sequence and step, appended to the cache by the call itself.
    with torch.no_grad():
        for step in range(args.steps):
            new = torch.randn(batch, 1, MODEL, device=device, dtype=dtype)
            tokens = [torch.cat([t, new[b]]) for b, t in enumerate(tokens)]
            q, k, v = layer(new)
            out = sigattn.sigmoid_attention_with_kvcache(q, k_cache, v_cache, cache_seqlens,
                                                         k_new=k, v_new=v, block_table=block_table,
                                                         sigmoid_bias=BIAS)
            cache_seqlens += 1
        print(f"{args.steps} decode steps: cache lengths {cache_seqlens.tolist()}")

        # The last step against attention recomputed over the whole sequences (padded layout).
        lengths = [len(t) for t in tokens]
        padded = torch.zeros(batch, max(lengths), MODEL, device=device, dtype=dtype)
        for b, t in enumerate(tokens):
            padded[b, :len(t)] = t
        q, k, v = layer(padded)
        lens = torch.tensor(lengths, device=device, dtype=torch.int32)
        full = sigattn.sigmoid_attention(q, k, v, is_causal=True, sigmoid_bias=BIAS,
                                         seq_lens_q=lens, seq_lens_k=lens)
        last = torch.stack([full[b, n - 1] for b, n in enumerate(lengths)]).unsqueeze(1)
        error = ((out.float() - last.float()).norm() / last.float().norm()).item()
        print(f"last decode step against full recomputation: relative L2 error {error:.2e}")
        assert error < 2e-2, "decode and recomputation disagree"


if __name__ == "__main__":
    main()
