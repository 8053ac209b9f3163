"""Context parallelism for sigmoid attention over torch.distributed: a sequence sharded over the
ranks of a process group, attended as if it were whole.

Sigmoid attention needs no normalizer, so the output of a query block is the plain sum of its
partial outputs over the key shards, and the backward needs no logsumexp: no merge with rescaling
as softmax ring attention needs.

- ring_attention: each rank keeps its query shard while the K/V shards travel around the ring
  (torch.distributed P2P, batch_isend_irecv), each step's transfer overlapped with the local
  kernel. The backward circulates K/V again, with the dK/dV accumulators travelling beside them
  back to their owners. Causal attention takes the load-balanced "zigzag" sharding: with N ranks
  the sequence is cut into 2N chunks and rank r holds chunks r and 2N-1-r, so that every rank
  has the same share of the visible triangle.
- ulysses_attention: all-to-all from sequence shards to head shards, the whole sequence attended
  locally for H/N heads, and all-to-all back.

The bias default is -log of the whole sequence's length, as for the unsharded call. Partial
outputs leave the kernel in q's dtype and are added in float32, so the ring's output carries one
extra rounding per key shard (a relative error of about N * 2^-9 in bf16 at worst, N the ring
size); Ulysses calls the kernel once on the whole sequence and adds nothing.

The algorithms are written once, as per-rank step generators that yield at each exchange, and
run either on a torch.distributed group or, for tests, with every rank simulated in one process.
"""

import math

import torch
import torch.distributed as dist

from . import _ops
from . import attention as _attention


def shard_sequence(x, rank, world_size, *, zigzag=False, dim=1):
    """Rank `rank`'s shard of the full sequence x along `dim`: the r-th of world_size equal
    chunks, or with zigzag chunks r and 2 * world_size - 1 - r of 2 * world_size, concatenated
    (the causal ring's sharding). The length must divide evenly."""
    chunks = 2 * world_size if zigzag else world_size
    length = x.shape[dim]
    if length % chunks != 0:
        raise ValueError(f"sequence length {length} does not divide into {chunks} equal chunks "
                         f"({world_size} ranks{', zigzag' if zigzag else ''})")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, {world_size})")
    parts = x.chunk(chunks, dim=dim)
    if not zigzag:
        return parts[rank]
    return torch.cat([parts[rank], parts[chunks - 1 - rank]], dim=dim)


def unshard_sequence(shards, *, zigzag=False, dim=1):
    """The full sequence from every rank's shard (in rank order), undoing shard_sequence."""
    if not zigzag:
        return torch.cat(list(shards), dim=dim)
    world_size = len(shards)
    halves = [shard.chunk(2, dim=dim) for shard in shards]
    ordered = [halves[r][0] for r in range(world_size)]
    ordered += [halves[r][1] for r in reversed(range(world_size))]
    return torch.cat(ordered, dim=dim)


def shard(x, group=None, *, zigzag=False, dim=1):
    """This rank's shard of x, the full sequence that every rank of `group` holds."""
    return shard_sequence(x, dist.get_rank(group), dist.get_world_size(group), zigzag=zigzag,
                          dim=dim)


def unshard(x, group=None, *, zigzag=False, dim=1):
    """The full sequence from this rank's shard x, gathered from every rank of `group`."""
    gathered = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, x.contiguous(), group=group)
    return unshard_sequence(gathered, zigzag=zigzag, dim=dim)


def ring_attention(q, k, v, group=None, *, is_causal=False, scale=None, sigmoid_bias=None,
                   sigmoid="fast"):
    """Sigmoid attention of the sequence whose shards the ranks of `group` hold, with autograd.

    Args:
        q: [B, Lq / N, Hq, D] this rank's query shard, N the group's size; k, v: [B, Lk / N,
            Hkv, D] its key and value shards. bf16 or fp16 CUDA tensors, one GPU per rank.
            Without is_causal any equal split works (shard(x, group)); with is_causal, q, k and v
            must be zigzag shards of sequences of one length (shard(x, group, zigzag=True)).
        group: the process group (default: the world); NCCL for GPUs.
        is_causal: key j is visible to query i when j <= i, positions of the whole sequence.
        scale: the score scale, default 1 / sqrt(D).
        sigmoid_bias: one scalar bias, default -log(Lk), Lk the whole sequence's key count.
        sigmoid: "fast" or "accurate", as in sigmoid_attention.

    Returns:
        [B, Lq / N, Hq, D] this rank's shard of the output, q's dtype.
    """
    options = _ring_options(q, k, v, dist.get_world_size(group), is_causal, scale, sigmoid_bias,
                            sigmoid, dist.get_rank(group))
    return _RingAttention.apply(q, k, v, _DistributedRing(group), options)


def ulysses_attention(q, k, v, group=None, *, is_causal=False, window=None, scale=None,
                      sigmoid_bias=None, sigmoid="fast"):
    """Sigmoid attention of the sequence whose contiguous shards (shard(x, group)) the ranks of
    `group` hold, by all-to-all to head shards: each rank attends the whole sequence for
    Hq / N query heads and Hkv / N key/value heads (both must divide by N), with autograd.

    Takes sigmoid_attention's options; its causal mask, window and default bias see the whole
    sequence. Returns this rank's [B, Lq / N, Hq, D] shard of the output.
    """
    world_size = dist.get_world_size(group)
    _check_heads(q, k, world_size)
    exchange = _DistributedAllToAll(group)
    q, k, v = (_Reshard.apply(x, exchange, True) for x in (q, k, v))
    out = _local_attention(q, k, v, is_causal, window, scale, sigmoid_bias, sigmoid)
    return _Reshard.apply(out, exchange, False)


def simulated_ulysses_attention(qs, ks, vs, *, is_causal=False, window=None, scale=None,
                                sigmoid_bias=None, sigmoid="fast"):
    """ulysses_attention of every rank's contiguous shards (lists in rank order) computed in one
    process through the same partitions of the exchanges, with autograd. Returns the output
    shards."""
    world_size = len(qs)
    _check_heads(qs[0], ks[0], world_size)

    def all_to_all(shards, to_parts, from_parts):
        parts = [to_parts(x, world_size) for x in shards]
        return [from_parts([parts[source][r] for source in range(world_size)])
                for r in range(world_size)]

    heads = [all_to_all(x, _sequence_to_heads_parts, _heads_from_sequence_parts)
             for x in (qs, ks, vs)]
    outs = [_local_attention(q, k, v, is_causal, window, scale, sigmoid_bias, sigmoid)
            for q, k, v in zip(*heads)]
    return all_to_all(outs, _heads_to_sequence_parts, _sequence_from_heads_parts)


# Ulysses' local call: the whole sequence for this rank's heads (swapped for a reference in the
# tests of the exchanges).
def _local_attention(q, k, v, is_causal, window, scale, sigmoid_bias, sigmoid):
    return _attention.sigmoid_attention(q, k, v, is_causal, scale, sigmoid_bias, window=window,
                                        sigmoid=sigmoid)


class _RingOptions:
    """What every step of one ring attention call needs besides the tensors."""

    def __init__(self, rank, world_size, causal, scale, bias, sigmoid):
        self.rank = rank
        self.world_size = world_size
        self.causal = causal
        self.scale = scale
        self.bias = bias
        self.sigmoid = sigmoid


def _ring_options(q, k, v, world_size, is_causal, scale, sigmoid_bias, sigmoid, rank):
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4:
            raise ValueError(f"{name} must be a 4-D [batch, seq, heads, head_dim] tensor shard")
    if k.shape != v.shape:
        raise ValueError(f"k and v shards must have one shape, got {tuple(k.shape)} and "
                         f"{tuple(v.shape)}")
    if is_causal:
        if q.shape[1] != k.shape[1] or q.shape[1] % 2 != 0:
            raise ValueError(f"causal ring attention takes zigzag shards (two equal chunks each) "
                             f"of query and key sequences of one length; got {q.shape[1]} query "
                             f"and {k.shape[1]} key rows per rank")
    # Checked before the first exchange, so that no rank fails with transfers in flight.
    scale, sigmoid_bias = _attention._scale_and_bias(scale, sigmoid_bias)
    _attention._accurate_sigmoid(sigmoid)
    if sigmoid_bias is None:
        sigmoid_bias = -math.log(k.shape[1] * world_size)
    return _RingOptions(rank, world_size, bool(is_causal), scale, sigmoid_bias, sigmoid)


def _check_heads(q, k, world_size):
    for name, heads in (("q", q.shape[2]), ("k/v", k.shape[2])):
        if heads % world_size != 0:
            raise ValueError(f"ulysses_attention splits heads over the {world_size} ranks: {name} "
                             f"has {heads} heads, not a multiple of {world_size}")


# The local kernel calls of a ring step, straight to the C ABI (no autograd: the ring's
# backward calls the backward kernel itself). The tests of the ring logic swap in a reference.
def _kernel_arguments(q, k, v, causal, options):
    arguments = _attention._checked(*_attention._dense(q, k, v, None, None), causal,
                                    options.scale, options.bias, None, None, options.sigmoid,
                                    False, False)
    _attention._check_devices(_attention._BTHD_NAMES, arguments[:8])
    return arguments


def _local_forward(q, k, v, causal, options):
    return _ops._forward_impl(*_kernel_arguments(q, k, v, causal, options))


def _local_backward(grad_out, q, k, v, causal, options):
    return _ops._backward_impl(grad_out, *_kernel_arguments(q, k, v, causal, options))


def _step_blocks(source, options):
    """Which rows of this rank's queries meet which rows of the K/V shard from rank `source`,
    and whether that block is causal: ("all" | "first" | "second", the same for K/V, causal).

    Zigzag shards hold chunks (r, 2N-1-r). The own shard is causal over its concatenation (chunk
    r precedes chunk 2N-1-r). A shard from a lower rank j: chunk j precedes both of ours and
    chunk 2N-1-j follows both, so all our queries see its first half and none its second. From a
    higher rank: both of its chunks lie between our two, so our second half sees all of it and
    our first half none of it."""
    if not options.causal:
        return "all", "all", False
    if source == options.rank:
        return "all", "all", True
    if source < options.rank:
        return "all", "first", False
    return "second", "all", False


def _rows(x, part):
    """x's rows (dim 1): all of them, or the first or second of its two zigzag chunks."""
    if part == "all":
        return x
    first, second = x.chunk(2, dim=1)
    return first if part == "first" else second


def _add_rows(target, part, value):
    _rows(target, part).add_(value.float())


def _forward_steps(q, k, v, options):
    """One rank's ring forward. Yields (k, v) to send to the next rank and gets back the pending
    exchange, whose wait() returns the previous rank's pair; returns the output shard."""
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    kv = (k, v)
    for step in range(options.world_size):
        source = (options.rank - step) % options.world_size
        pending = (yield kv) if step + 1 < options.world_size else None
        q_rows, kv_rows, causal = _step_blocks(source, options)
        partial = _local_forward(_rows(q, q_rows), _rows(kv[0], kv_rows), _rows(kv[1], kv_rows),
                                 causal, options)
        _add_rows(out, q_rows, partial)
        if pending is not None:
            kv = pending.wait()
    return out.to(q.dtype)


def _backward_steps(grad_out, q, k, v, options):
    """One rank's ring backward. K/V travel as in the forward; the float32 dK/dV accumulators
    of each shard travel one step behind them and reach their owner after world_size steps.
    Yields what to send, as _forward_steps does; returns (dq, dk, dv) of this rank's shards."""
    grad_q = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    kv = (k, v)
    pending_sums = None
    for step in range(options.world_size):
        source = (options.rank - step) % options.world_size
        pending_kv = (yield kv) if step + 1 < options.world_size else None
        q_rows, kv_rows, causal = _step_blocks(source, options)
        dq, dk, dv = _local_backward(_rows(grad_out, q_rows), _rows(q, q_rows),
                                     _rows(kv[0], kv_rows), _rows(kv[1], kv_rows), causal,
                                     options)
        _add_rows(grad_q, q_rows, dq)
        if pending_sums is None:
            sums = tuple(torch.zeros(k.shape, dtype=torch.float32, device=k.device)
                         for _ in range(2))
        else:
            sums = pending_sums.wait()
        _add_rows(sums[0], kv_rows, dk)
        _add_rows(sums[1], kv_rows, dv)
        pending_sums = yield sums
        if pending_kv is not None:
            kv = pending_kv.wait()
    grad_k, grad_v = pending_sums.wait()
    return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype)


class _DistributedRing:
    """Runs one rank's steps on a torch.distributed group: each yielded tuple goes to the next
    rank while the previous rank's arrives, by batch_isend_irecv (NCCL runs it on its own stream,
    so the transfer overlaps the kernels the generator launches before wait())."""

    def __init__(self, group):
        self.group = group
        rank, size = dist.get_rank(group), dist.get_world_size(group)
        # torch < 2.0 names it _get_global_rank.
        to_global = getattr(dist, "get_global_rank", None) or dist.distributed_c10d._get_global_rank
        global_rank = (lambda r: r) if group is None else (lambda r: to_global(group, r))
        self.next = global_rank((rank + 1) % size)
        self.previous = global_rank((rank - 1) % size)

    def run(self, steps):
        finished, value = _advance(steps, None)
        while not finished:
            finished, value = _advance(steps, self._exchange(value))
        return value

    def _exchange(self, tensors):
        received = tuple(torch.empty_like(x) for x in tensors)
        operations = [dist.P2POp(dist.isend, x.contiguous(), self.next, self.group)
                      for x in tensors]
        operations += [dist.P2POp(dist.irecv, x, self.previous, self.group) for x in received]
        return _Pending(dist.batch_isend_irecv(operations), operations, received)


class _Pending:
    """An exchange in flight; holds the sent tensors until it completes."""

    def __init__(self, requests, operations, received):
        self.requests = requests
        self.operations = operations
        self.received = received

    def wait(self):
        for request in self.requests:
            request.wait()
        self.operations = None
        return self.received


class _Ready:
    def __init__(self, value):
        self.value = value

    def wait(self):
        return self.value


def _run_simulated_ring(rank_steps):
    """Runs every rank's step generator in one process, in lockstep: at each exchange rank r
    receives what rank r - 1 yielded. Returns the ranks' results in rank order."""
    states = [_advance(steps, None) for steps in rank_steps]
    while True:
        finished = [state[0] for state in states]
        if all(finished):
            return [state[1] for state in states]
        if any(finished):
            raise RuntimeError("ranks of the simulated ring stopped at different steps")
        states = [_advance(steps, _Ready(states[r - 1][1])) for r, steps in enumerate(rank_steps)]


def _advance(steps, arrived):
    """Runs a rank's steps to its next exchange: (False, what it sends), or (True, its result)
    once it returns. `arrived`: the exchange it waits on (None to start)."""
    try:
        return False, next(steps) if arrived is None else steps.send(arrived)
    except StopIteration as done:
        return True, done.value


def simulated_ring_attention(qs, ks, vs, *, is_causal=False, scale=None, sigmoid_bias=None,
                             sigmoid="fast", grad_outs=None):
    """ring_attention of every rank's shards (lists in rank order) computed in one process by
    the same steps; with grad_outs also the backward. Returns the output shards, or (outputs,
    (dq shards, dk shards, dv shards))."""
    world_size = len(qs)
    options = [_ring_options(qs[r], ks[r], vs[r], world_size, is_causal, scale, sigmoid_bias,
                             sigmoid, r) for r in range(world_size)]
    outs = _run_simulated_ring([_forward_steps(qs[r], ks[r], vs[r], options[r])
                               for r in range(world_size)])
    if grad_outs is None:
        return outs
    grads = _run_simulated_ring([_backward_steps(grad_outs[r], qs[r], ks[r], vs[r], options[r])
                                for r in range(world_size)])
    return outs, tuple(list(column) for column in zip(*grads))


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, ring, options):
        ctx.save_for_backward(q, k, v)
        ctx.ring, ctx.options = ring, options
        return ring.run(_forward_steps(q, k, v, options))

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v = ctx.saved_tensors
        grads = ctx.ring.run(_backward_steps(grad_out.contiguous(), q, k, v, ctx.options))
        return (*grads, None, None)


def _sequence_to_heads_parts(x, world_size):
    """[B, L / N, H, D] -> the N parts [B, L / N, H / N, D] that go to each rank (rank i gets
    heads i * H / N ..)."""
    return [part.contiguous() for part in x.chunk(world_size, dim=2)]


def _heads_from_sequence_parts(parts):
    """The parts that arrived from each rank (rank order, each [B, L / N, H / N, D]) -> this
    rank's heads over the whole sequence, [B, L, H / N, D]."""
    return torch.cat(parts, dim=1)


def _heads_to_sequence_parts(x, world_size):
    """[B, L, H / N, D] -> the N parts [B, L / N, H / N, D] that go back to each rank (rank i gets
    sequence chunk i)."""
    return [part.contiguous() for part in x.chunk(world_size, dim=1)]


def _sequence_from_heads_parts(parts):
    """The parts that arrived from each rank (each [B, L / N, H / N, D], rank i holding heads
    i * H / N ..) -> this rank's sequence chunk with every head, [B, L / N, H, D]."""
    return torch.cat(parts, dim=2)


class _DistributedAllToAll:
    """Sends parts[i] to rank i of the group and returns what each rank sent here."""

    def __init__(self, group):
        self.group = group
        self.world_size = dist.get_world_size(group)

    def __call__(self, parts):
        sent = torch.stack(parts)
        received = torch.empty_like(sent)
        dist.all_to_all_single(received, sent, group=self.group)
        return list(received.unbind(0))


def _reshard(x, exchange, to_heads):
    """Sequence shards to head shards (to_heads) or back, through one all-to-all."""
    if to_heads:
        parts = exchange(_sequence_to_heads_parts(x, exchange.world_size))
        return _heads_from_sequence_parts(parts)
    return _sequence_from_heads_parts(exchange(_heads_to_sequence_parts(x, exchange.world_size)))


class _Reshard(torch.autograd.Function):
    """_reshard with autograd: the gradient goes back through the opposite exchange."""

    @staticmethod
    def forward(ctx, x, exchange, to_heads):
        ctx.exchange, ctx.to_heads = exchange, to_heads
        return _reshard(x, exchange, to_heads)

    @staticmethod
    def backward(ctx, grad):
        return _reshard(grad.contiguous(), ctx.exchange, not ctx.to_heads), None, None
