"""Trains a few steps of a small pre-norm transformer block whose attention is sigattn's sigmoid
attention (causal, grouped-query), on random token sequences learning to copy the previous token,
and prints the loss. Usage: python3 train_block.py [--steps 50] [--compile]
"""

import argparse

import torch
import torch.nn.functional as F

import sigattn


class Block(torch.nn.Module):
    def __init__(self, dim, heads, kv_heads):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, (heads + 2 * kv_heads) * self.head_dim, bias=False)
        self.proj = torch.nn.Linear(dim, dim, bias=False)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(),
                                       torch.nn.Linear(4 * dim, dim))

    def forward(self, x):
        batch, seq, _ = x.shape
        qkv = self.qkv(self.norm1(x)).view(batch, seq, self.heads + 2 * self.kv_heads,
                                           self.head_dim)
        # Slices of one projection: [B, T, H, D] views with the head dim contiguous, passed to
        # the kernels with their strides, without copies.
        q, k, v = qkv.split([self.heads, self.kv_heads, self.kv_heads], dim=2)
        attention = sigattn.sigmoid_attention(q, k, v, is_causal=True)
        x = x + self.proj(attention.reshape(batch, seq, -1))
        return x + self.mlp(self.norm2(x))


class Model(torch.nn.Module):
    def __init__(self, vocab, dim, heads, kv_heads):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.block = Block(dim, heads, kv_heads)
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, tokens):
        return self.head(self.block(self.embed(tokens)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--compile", action="store_true", help="torch.compile(fullgraph=True)")
    args = parser.parse_args()

    vocab, batch, seq = 256, 8, 512
    model = Model(vocab, dim=512, heads=8, kv_heads=2).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step_fn = torch.compile(model, fullgraph=True) if args.compile else model
    for step in range(args.steps):
        tokens = torch.randint(0, vocab, (batch, seq), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = step_fn(tokens)
        # Predict the previous token: position t must attend to position t - 1.
        loss = F.cross_entropy(logits[:, 1:].float().reshape(-1, vocab),
                               tokens[:, :-1].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:3d}  loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
