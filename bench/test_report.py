"""Tests of report.py's CSV round trip and its errors on files bench.py did not write (no GPU)."""

import os
import tempfile
import unittest

import report


class ReadCsvTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.dir.cleanup()

    def path(self, name, text=None):
        path = os.path.join(self.dir.name, name)
        if text is not None:
            with open(path, "w") as f:
                f.write(text)
        return path

    def test_round_trip_keeps_values_and_leaves_empty_cells_out(self):
        rows = [{"d": 64, "L": 4096, "pad": 0, "causal": 0, "B": 4, "H": 32, "sigattn": 471.4,
                 "triton": 416.6, "sigattn_bwd": 247.5, "sigattn_bwd_fast": 358.0,
                 "sigattn_step": 301.2, "cudnn_step": 322.9}]
        path = self.path("rows.csv")
        report.write_csv(rows, path)
        self.assertEqual(report.read_csv(path), rows)

    def test_a_file_without_the_key_columns_is_named(self):
        path = self.path("other.csv", "name,value\na,1\n")
        with self.assertRaisesRegex(ValueError, r"other\.csv: not a bench\.py CSV, no column d"):
            report.read_csv(path)

    def test_a_bad_cell_names_its_row_and_column(self):
        path = self.path("bad.csv", "d,L,pad,causal,sigattn\n64,4096,0,0,471\n64,lots,0,0,480\n")
        with self.assertRaisesRegex(ValueError, r"bad\.csv:3: column 'L' holds 'lots'"):
            report.read_csv(path)

    def test_an_unknown_column_is_named(self):
        path = self.path("extra.csv", "d,L,pad,causal,sigattn,speed\n64,4096,0,0,471,1\n")
        with self.assertRaisesRegex(ValueError, r"extra\.csv:2: unknown column 'speed'"):
            report.read_csv(path)


if __name__ == "__main__":
    unittest.main()
