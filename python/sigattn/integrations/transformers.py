"""Hugging Face transformers adapter: `register()` adds "sigattn" to transformers' attention and
mask registries, so that `attn_implementation="sigattn"` runs a model's attention layers through
sigattn.sigmoid_attention (sigmoid attention: a model trained with softmax attention computes
something else).

The model's masks are mapped to what the kernels take: causal or not from the layer, a sliding
window from the layer's `sliding_window`, and a 2D padding mask to per-sequence lengths when every
sequence is right-padded. Anything else (left padding, packed sequences found from position ids,
chunked or block masks, custom mask functions, 4D masks, attention dropout, soft-capping) raises
ValueError naming it.
"""

import torch

from ..attention import sigmoid_attention

NAME = "sigattn"


class UnsupportedMaskError(ValueError):
    """A mask or attention option of the model that sigattn's kernels cannot express."""


def register(name=NAME):
    """Registers the attention function and its mask function under `name` (default "sigattn")
    in transformers' AttentionInterface and AttentionMaskInterface."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(name, sigattn_attention_forward)
    AttentionMaskInterface.register(name, sigattn_mask)


def padding_lengths(padding_mask):
    """Valid lengths of a [batch, kv_length] boolean padding mask (True: attended), or None when
    nothing is padded. Reads the mask on the host (one synchronization); raises
    UnsupportedMaskError unless every row is right-padded (ones, then zeros)."""
    padding_mask = padding_mask.bool()
    lengths = padding_mask.sum(dim=-1, dtype=torch.int32)
    if bool((lengths == padding_mask.shape[-1]).all()):
        return None
    positions = torch.arange(padding_mask.shape[-1], device=padding_mask.device)
    if not torch.equal(padding_mask, positions < lengths.unsqueeze(-1)):
        raise UnsupportedMaskError(
            "sigattn takes padding as per-sequence lengths, so the padding must be on the right "
            "(tokenizer padding_side='right'); this attention mask has masked positions before "
            "attended ones (left padding or holes)")
    return lengths


def sigattn_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
                 attention_mask=None, local_size=None, use_vmap=False, device="cpu", **kwargs):
    """transformers mask function: checks that the mask pattern is causal, bidirectional or a
    causal sliding window (the attention function takes those from the layer), and returns the
    2D padding mask cut to the keys (None without padding), as the flash-attention masks do."""
    from transformers import masking_utils

    if mask_function is None:
        mask_function = masking_utils.causal_mask_function
    plain = (masking_utils.causal_mask_function, masking_utils.bidirectional_mask_function)
    if mask_function not in plain:
        if use_vmap or local_size is None:
            raise UnsupportedMaskError(
                "sigattn supports causal, bidirectional and causal sliding-window masks with "
                "right padding; this model's mask adds another pattern (packed sequences, "
                "chunks, blocks or a custom mask function)")
        _check_sliding_window(batch_size, q_length, kv_length, q_offset, kv_offset,
                              mask_function, local_size, device)
    if attention_mask is None:
        return None
    # The keys' columns of the 2D mask, padded with False past its end, as sdpa_mask reads them.
    padding = masking_utils.prepare_padding_mask(attention_mask.bool(), kv_length, kv_offset)
    padding = padding[:, kv_offset:kv_offset + kv_length]
    return None if padding_lengths(padding) is None else padding


def _check_sliding_window(batch_size, q_length, kv_length, q_offset, kv_offset, mask_function,
                          local_size, device):
    """The mask built from `mask_function` equals the causal sliding window of `local_size`
    (materialized once per model call, without padding)."""
    from transformers import masking_utils

    def materialize(function):
        return masking_utils.sdpa_mask(batch_size, q_length, kv_length, q_offset, kv_offset,
                                       mask_function=function, allow_is_causal_skip=False,
                                       device=device)

    expected = materialize(masking_utils.sliding_window_causal_mask_function(local_size))
    if not torch.equal(materialize(mask_function), expected):
        raise UnsupportedMaskError(
            f"sigattn supports a causal sliding window; this model's mask with local size "
            f"{local_size} is another pattern (chunked, bidirectional, packed or custom)")


def kernel_arguments(module, query, key, attention_mask, dropout=0.0, is_causal=None,
                     sliding_window=None, softcap=None):
    """The mask and options of one attention call ([batch, heads, seq, head_dim] tensors) as
    sigmoid_attention's keyword arguments: is_causal, window, seq_lens_q, seq_lens_k."""
    if dropout:
        raise UnsupportedMaskError(
            f"sigattn has no attention dropout (dropout = {dropout}); set the model config's "
            f"attention dropout to 0")
    if softcap is not None:
        raise UnsupportedMaskError("sigattn does not soft-cap scores (softcap is set)")
    if attention_mask is not None and attention_mask.dim() != 2:
        raise UnsupportedMaskError(
            f"sigattn takes the 2D padding masks its mask function makes; got a "
            f"{attention_mask.dim()}-D attention mask (a prepared or custom mask)")
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    q_length, kv_length = query.shape[2], key.shape[2]
    window = None
    if sliding_window is not None and kv_length > sliding_window:
        if not is_causal:
            raise UnsupportedMaskError("sigattn supports sliding windows in causal layers only")
        # transformers' window keeps key j for query i when i - sliding_window < j <= i.
        window = (sliding_window - 1, -1)
    seq_lens_q = seq_lens_k = None
    if attention_mask is not None:
        seq_lens_k = attention_mask.sum(dim=-1, dtype=torch.int32)
        # Equal lengths: the same sequences as queries and keys. Fewer queries (a cache): the
        # queries are the last tokens of each key sequence, which the bottom-right causal
        # alignment of sigattn expresses with the full query length.
        if q_length == kv_length:
            seq_lens_q = seq_lens_k
    return {"is_causal": bool(is_causal), "window": window, "seq_lens_q": seq_lens_q,
            "seq_lens_k": seq_lens_k}


def sigattn_attention_forward(module, query, key, value, attention_mask, dropout=0.0,
                              scaling=None, is_causal=None, sliding_window=None, softcap=None,
                              **kwargs):
    """transformers attention function on [batch, heads, seq, head_dim] tensors; returns the
    [batch, seq, heads, head_dim] output and no attention weights."""
    arguments = kernel_arguments(module, query, key, attention_mask, dropout, is_causal,
                                 sliding_window, softcap)
    # The lengths come from the mask and lie within the sequence by construction.
    out = sigmoid_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                            scale=scaling, trust_lengths=True, **arguments)
    return out, None
