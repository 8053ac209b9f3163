"""Tests of the Hugging Face transformers adapter (sigattn.integrations.transformers).

CPU: the masks' mapping to sigmoid_attention's arguments, and tiny models built from configs run
end to end with sigmoid_attention replaced by a plain torch implementation, against the same model
whose attention reads transformers' own 4D masks. GPU: a tiny Llama (GQA, right padding) forward
and backward with the kernels, against the same model in fp64 with the plain attention; the error
is bounded by that of the bf16 model with the plain attention. Skips without transformers.
"""

import copy
import unittest
from unittest import mock

import torch

try:
    import transformers
    from transformers import masking_utils

    from sigattn.integrations import transformers as adapter
    SKIP_REASON = None
except ImportError as error:
    SKIP_REASON = f"transformers is not importable: {error}"

from test_gpu import SKIP_REASON as GPU_SKIP_REASON
from test_gpu import GpuTestCase, reference, rel_l2


def plain_sigmoid_attention(query, key, value, is_causal=False, scale=None, window=None,
                            seq_lens_q=None, seq_lens_k=None, **options):
    """sigmoid_attention's arguments (BTHD) computed by the test suite's plain implementation,
    in the inputs' dtype, rounding once at the end."""
    out = reference(query, key, value, seq_lens_q=seq_lens_q, seq_lens_k=seq_lens_k,
                    is_causal=is_causal, window=window, scale=scale)
    return out.to(query.dtype).contiguous()


def plain_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                            is_causal=None, sliding_window=None, softcap=None, **kwargs):
    """The adapter's attention function with the plain implementation in place of the kernels."""
    arguments = adapter.kernel_arguments(module, query, key, attention_mask, dropout, is_causal,
                                         sliding_window, softcap)
    out = plain_sigmoid_attention(query.transpose(1, 2), key.transpose(1, 2),
                                  value.transpose(1, 2), scale=scaling, **arguments)
    return out, None


def masked_sigmoid_attention(module, query, key, value, attention_mask, scaling=None,
                             **kwargs):
    """An attention function that reads transformers' 4D boolean (sdpa) mask instead of sigattn's
    mapping: sigmoid attention with the bias -log(number of valid keys), from the test's
    padding mask."""
    group = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
    scores = torch.einsum("bhid,bhjd->bhij", query.double(), key.double()) * scaling
    valid_keys = TestInputs.padding.sum(dim=-1).double().view(-1, 1, 1, 1)
    weights = torch.sigmoid(scores - torch.log(valid_keys))
    if attention_mask is None:
        is_causal = kwargs.get("is_causal", getattr(module, "is_causal", True))
        attention_mask = masking_utils.sdpa_mask(
            query.shape[0], query.shape[2], key.shape[2], allow_is_causal_skip=False,
            mask_function=(masking_utils.causal_mask_function if is_causal
                           else masking_utils.bidirectional_mask_function))
    # Rows of padded queries are zero in sigattn's output.
    rows = TestInputs.padding[:, None, :, None] & attention_mask
    out = torch.einsum("bhij,bhjd->bihd", weights * rows, value.double())
    return out.to(query.dtype).contiguous(), None


class TestInputs:
    """The padding mask of the model call under test, which masked_sigmoid_attention reads."""

    padding = None


def registered():
    adapter.register()
    transformers.AttentionInterface.register("sigmoid_sdpa_mask", masked_sigmoid_attention)
    masking_utils.AttentionMaskInterface.register("sigmoid_sdpa_mask", masking_utils.sdpa_mask)


def llama_config(**overrides):
    options = dict(vocab_size=97, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    options.update(overrides)
    return transformers.LlamaConfig(**options)


def right_padding(lengths, total):
    return torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]


@unittest.skipIf(SKIP_REASON is not None, SKIP_REASON or "")
class MaskMappingTest(unittest.TestCase):
    def setUp(self):
        registered()

    def test_padding_lengths(self):
        self.assertIsNone(adapter.padding_lengths(torch.ones(2, 5, dtype=torch.bool)))
        lengths = adapter.padding_lengths(right_padding([3, 5], 5))
        self.assertEqual(lengths.tolist(), [3, 5])
        self.assertEqual(lengths.dtype, torch.int32)
        left = right_padding([3, 5], 5).flip(-1)
        with self.assertRaisesRegex(adapter.UnsupportedMaskError, "padding_side='right'"):
            adapter.padding_lengths(left)

    def test_mask_function_patterns(self):
        padding = right_padding([4, 8], 8)
        mask = adapter.sigattn_mask(2, 8, 8, mask_function=masking_utils.causal_mask_function,
                                    attention_mask=padding)
        self.assertTrue(torch.equal(mask, padding))
        self.assertIsNone(adapter.sigattn_mask(
            2, 8, 8, mask_function=masking_utils.bidirectional_mask_function,
            attention_mask=torch.ones(2, 8, dtype=torch.bool)))
        sliding = masking_utils.sliding_window_causal_mask_function(3)
        self.assertIsNone(adapter.sigattn_mask(2, 8, 8, mask_function=sliding, local_size=3))
        chunked = masking_utils.chunked_causal_mask_function(3, torch.zeros(2, dtype=torch.long))
        with self.assertRaisesRegex(adapter.UnsupportedMaskError, "local size 3"):
            adapter.sigattn_mask(2, 8, 8, mask_function=chunked, local_size=3)
        packed = masking_utils.and_masks(masking_utils.causal_mask_function,
                                         masking_utils.packed_sequence_mask_function(
                                             torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]] * 2)))
        with self.assertRaisesRegex(adapter.UnsupportedMaskError, "packed sequences"):
            adapter.sigattn_mask(2, 8, 8, mask_function=packed)

    def test_kernel_arguments(self):
        module = torch.nn.Module()
        query, key = torch.empty(2, 4, 8, 16), torch.empty(2, 2, 8, 16)
        arguments = adapter.kernel_arguments(module, query, key, right_padding([5, 8], 8),
                                             sliding_window=4)
        self.assertEqual((arguments["is_causal"], arguments["window"]), (True, (3, -1)))
        self.assertEqual(arguments["seq_lens_q"].tolist(), [5, 8])
        self.assertIs(arguments["seq_lens_q"], arguments["seq_lens_k"])
        decoding = adapter.kernel_arguments(module, query[:, :, :1], key,
                                            right_padding([5, 8], 8), is_causal=True)
        self.assertIsNone(decoding["seq_lens_q"])
        module.is_causal = False
        self.assertFalse(adapter.kernel_arguments(module, query, key, None)["is_causal"])
        for options, pattern in (({"dropout": 0.1}, "no attention dropout"),
                                 ({"softcap": 30.0}, "soft-cap"),
                                 ({"sliding_window": 4}, "causal layers only")):
            with self.assertRaisesRegex(adapter.UnsupportedMaskError, pattern):
                adapter.kernel_arguments(module, query, key, None, **options)
        with self.assertRaisesRegex(adapter.UnsupportedMaskError, "4-D attention mask"):
            adapter.kernel_arguments(module, query, key, torch.ones(2, 1, 8, 8))


@unittest.skipIf(SKIP_REASON is not None, SKIP_REASON or "")
class ModelOnCpuTest(unittest.TestCase):
    """Whole models through attn_implementation="sigattn" with the kernels replaced by the plain
    implementation, against the same weights reading transformers' 4D masks."""

    def setUp(self):
        registered()
        torch.manual_seed(0)

    def compare(self, config, padding, model_class=None):
        model_class = model_class or transformers.AutoModel
        model = model_class.from_config(copy.deepcopy(config), attn_implementation="sigattn")
        model.double().eval()
        masked = model_class.from_config(copy.deepcopy(config),
                                         attn_implementation="sigmoid_sdpa_mask")
        masked.load_state_dict(model.state_dict())
        masked.double().eval()
        ids = torch.randint(0, config.vocab_size, padding.shape)
        TestInputs.padding = padding
        with mock.patch.object(adapter, "sigmoid_attention", plain_sigmoid_attention):
            ours = model(input_ids=ids, attention_mask=padding.long()).last_hidden_state
        theirs = masked(input_ids=ids, attention_mask=padding.long()).last_hidden_state
        valid = padding.unsqueeze(-1)
        self.assertLess(rel_l2(ours * valid, theirs * valid), 1e-12)

    def test_llama_with_right_padding(self):
        self.compare(llama_config(), right_padding([11, 16, 7], 16))

    def test_mistral_sliding_window(self):
        config = transformers.MistralConfig(
            vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1, sliding_window=5)
        self.compare(config, right_padding([12, 9], 12))

    def test_left_padding_is_refused(self):
        model = transformers.AutoModel.from_config(llama_config(), attn_implementation="sigattn")
        padding = right_padding([5, 8], 8).flip(-1)
        with self.assertRaisesRegex(adapter.UnsupportedMaskError, "padding_side='right'"):
            model(input_ids=torch.zeros(2, 8, dtype=torch.long), attention_mask=padding.long())


@unittest.skipIf(SKIP_REASON is not None, SKIP_REASON or "")
@unittest.skipIf(GPU_SKIP_REASON is not None, GPU_SKIP_REASON or "")
class ModelOnGpuTest(GpuTestCase):
    """A tiny random Llama (GQA, right padding) in bf16 with the kernels, forward and backward,
    against the fp64 model with the plain attention. The bound is twice the error of the bf16
    model with the plain attention (which rounds the same layers), plus a small floor."""

    def run_model(self, model, ids, padding, weights):
        out = model(input_ids=ids, attention_mask=padding.long()).last_hidden_state
        (out.double() * weights).sum().backward()
        grads = {name: p.grad.double() for name, p in model.named_parameters()
                 if "self_attn" in name}
        return out.double() * padding.unsqueeze(-1), grads

    def test_llama_forward_and_backward_against_fp64(self):
        registered()
        transformers.AttentionInterface.register("sigmoid_plain", plain_attention_forward)
        masking_utils.AttentionMaskInterface.register("sigmoid_plain", adapter.sigattn_mask)
        config = llama_config(hidden_size=256, num_attention_heads=4, num_key_value_heads=2)
        padding = right_padding([200, 129, 256], 256).cuda()
        ids = torch.randint(0, config.vocab_size, padding.shape, device="cuda")
        weights = torch.randn(3, 256, 256, device="cuda", dtype=torch.float64)

        # Each model its own config: from_config records the implementation in it.
        exact = transformers.AutoModel.from_config(copy.deepcopy(config),
                                                   attn_implementation="sigmoid_plain")
        exact = exact.double().cuda()
        results = {}
        for name, implementation, dtype in (("exact", "sigmoid_plain", torch.float64),
                                            ("plain", "sigmoid_plain", torch.bfloat16),
                                            ("sigattn", "sigattn", torch.bfloat16)):
            model = transformers.AutoModel.from_config(copy.deepcopy(config),
                                                       attn_implementation=implementation)
            model.load_state_dict(exact.state_dict())
            results[name] = self.run_model(model.to("cuda", dtype), ids, padding, weights)
        exact_grads = results["exact"][1]
        for index, what in ((0, "hidden states"), (1, "attention weight gradients")):
            for key in ([None] if index == 0 else sorted(exact_grads)):
                def pick(name):
                    value = results[name][index]
                    return value if key is None else value[key]

                baseline = rel_l2(pick("plain"), pick("exact"))
                bound = 2 * baseline + 2e-3
                self.assert_close(pick("sigattn"), pick("exact"), bound,
                                  f"{what} {key or ''} (bf16 with plain attention: "
                                  f"{baseline:.2e})")


if __name__ == "__main__":
    unittest.main()
