"""Tests of bench.py's --lengths batch and visible-pair counts (no GPU, no torch)."""

import unittest

import bench


class VisiblePairsTest(unittest.TestCase):
    def test_masks(self):
        self.assertEqual(bench.visible_pairs(4, False, None), 16)
        self.assertEqual(bench.visible_pairs(4, True, None), 10)
        # Two keys left of the diagonal and the diagonal: rows see 1, 2, 3, 3 keys.
        self.assertEqual(bench.visible_pairs(4, True, (2, 0)), 9)
        self.assertEqual(bench.visible_pairs(4, False, (0, 1)), 7)
        self.assertEqual(bench.visible_pairs(4, False, (-1, -1)), 16)

    def test_window_of_256_sees_about_256_keys_per_row(self):
        pairs = bench.visible_pairs(8192, True, (256, 0))
        self.assertEqual(pairs, 8192 * 257 - 256 * 257 // 2)


class CellLengthsTest(unittest.TestCase):
    def test_seeded_heavy_tailed_and_clipped(self):
        lengths = bench.cell_lengths(24576, 128, 4096, seed=7)
        self.assertEqual(lengths, bench.cell_lengths(24576, 128, 4096, seed=7))
        self.assertGreaterEqual(sum(lengths), 24576)
        self.assertLess(sum(lengths) - lengths[-1], 24576)
        self.assertTrue(all(128 <= x <= 4096 for x in lengths))
        # Heavy-tailed: the FLOP-weighted length is well above the median.
        flop_len = sum(x ** 3 for x in lengths) / sum(x * x for x in lengths)
        self.assertGreater(flop_len, 1.5 * sorted(lengths)[len(lengths) // 2])


if __name__ == "__main__":
    unittest.main()
