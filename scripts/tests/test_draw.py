"""Drawing every figure from synthetic results (matplotlib from scripts/.venv, made on first use)."""

import contextlib
import io
import zlib
import os
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from figures import venv  # noqa: E402

try:
    import matplotlib  # noqa: F401
except ImportError:
    venv.make_importable(log=lambda msg: print(msg, file=sys.stderr))

import reproduce  # noqa: E402
from figures import results as R  # noqa: E402
from figures.draw import DRAW  # noqa: E402
from figures.plans import FIGURES  # noqa: E402
from figures.settings import FULL, QUICK, Settings  # noqa: E402
from synthetic import write_results  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAKE = Path(__file__).resolve().parent / "fake_scalio_ycsb.py"


def check_png(test: unittest.TestCase, path: Path) -> None:
    test.assertTrue(path.exists(), path)
    data = path.read_bytes()
    test.assertGreater(len(data), 10_000, path)
    test.assertEqual(data[:8], PNG_MAGIC, path)


class DrawEveryFigure(unittest.TestCase):
    def draw(self, key: str, settings: Settings, skip=lambda run: False) -> Path:
        d = Path(tempfile.mkdtemp())
        runs = FIGURES[key].plan(settings)
        write_results(runs, d / "json", skip=skip)
        paths = DRAW[key](R.collect(runs, d / "json"), d / "figures")
        self.assertEqual([p.name for p in paths], [f"{key}.png", f"{key}.pdf"])
        check_png(self, paths[0])
        self.assertGreater(paths[1].stat().st_size, 1000)
        self.assertEqual(paths[1].read_bytes()[:4], b"%PDF")
        return paths[0]

    def test_each_figure_quick(self):
        for key in FIGURES:
            with self.subTest(key):
                self.draw(key, Settings(scale=QUICK))

    def test_each_figure_full_scale_points(self):
        for key in FIGURES:
            with self.subTest(key):
                self.draw(key, Settings(scale=FULL, records=1000, operations=1000))

    def test_the_caption_says_what_the_paper_scale_leaves_out(self):
        from figures.settings import PAPER

        d = Path(tempfile.mkdtemp())
        runs = FIGURES["fig11"].plan(Settings(scale=PAPER))
        write_results(runs, d / "json")
        points = R.collect(runs, d / "json")
        plain = DRAW["fig11"](points, d / "plain")[0].read_bytes()
        captioned = DRAW["fig11"](points, d / "captioned", [PAPER.reductions["fig11"]])[0]
        check_png(self, captioned)
        self.assertNotEqual(plain, captioned.read_bytes())

    def test_the_warmup_note_says_how_long_each_run_warmed_and_whether_it_settled(self):
        from figures.draw import _warmup_note

        runs = [r for r in FIGURES["fig18"].plan(Settings(scale=QUICK)) if r.workload == "c"]
        self.assertEqual([r.assoc for r in runs], [4, 8, 16])
        whole, rest = {"operations": 1_000_000}, {"operations": 400_000}
        warmups = [
            {"operations": 5_600_000, "settled": True, "emulated": False, "window": 1_000_000, "windows": [whole] * 2},
            {"operations": 12_000_000, "settled": False, "emulated": False, "window": 1_000_000, "windows": [whole] * 2},
            {"operations": 0, "settled": None, "emulated": False},
        ]
        points = [R.Point(r, {"warmup": w}) for r, w in zip(runs, warmups)]
        note = _warmup_note(points, lambda r: r.assoc, str)
        self.assertIn("C 4 Scalio: 5.6M settled", note)
        self.assertIn("C 8 Scalio: 12.0M NOT settled", note)
        self.assertNotIn("C 16", note)
        self.assertIn("emulation suspended", note)
        self.assertIsNone(_warmup_note([R.Point(r, {"warmup": None}) for r in runs], lambda r: r.assoc, str))
        # A shorter last window (the rest of the cap) is not settled, whatever an older harness said.
        at_cap = {**warmups[0], "operations": 12_000_000, "windows": [whole, rest]}
        self.assertIn("C 4 Scalio: 12.0M NOT settled", _warmup_note([R.Point(runs[0], {"warmup": at_cap})], lambda r: r.assoc, str))

    def test_the_evictions_note_tells_a_cache_that_had_not_filled(self):
        from figures.draw import _evictions_note

        runs = FIGURES["fig18"].plan(Settings(scale=QUICK))
        points = [R.Point(r, {"run": {"server_counters": {"table_evictions": n}}}) for r, n in zip(runs, (5000, 200, 0))]
        note = _evictions_note(points, lambda r: r.assoc, str)
        self.assertIn("A 4: 5,000; A 8: 200; A 16: 0", note)  # quick fig18 starts with YCSB-A
        self.assertIn("had not filled", note)
        full = [R.Point(r, {"run": {"server_counters": {"table_evictions": 5000}}}) for r in runs]
        self.assertNotIn("had not filled", _evictions_note(full, lambda r: r.assoc, str))
        self.assertIsNone(_evictions_note([R.Point(r, None) for r in runs], lambda r: r.assoc, str))

    def test_a_one_panel_legend_wraps_instead_of_running_off_the_figure(self):
        from figures.draw import _legend_columns

        labels = ["Scalio", "LEED+Ditto", "Scalio hit ratio", "LEED+Ditto hit ratio", "ideal hit ratio (perfect cache)"]
        self.assertEqual(_legend_columns(labels, 7.6), 5)  # two panels: one row, as before
        self.assertLess(_legend_columns(labels, 6.0), 5)  # one panel: two rows
        self.assertEqual(_legend_columns(["a"] * 8, 30.0), 4)  # at most 6 a row, rows balanced

    def test_figures_with_missing_runs_still_draw(self):
        for key in FIGURES:
            with self.subTest(key):
                # Drop every other run, and then all of them.
                self.draw(key, Settings(scale=QUICK), skip=lambda run: zlib.crc32(run.name().encode()) % 2 == 0)
                self.draw(key, Settings(scale=QUICK), skip=lambda run: True)

    def test_missing_points_change_the_picture(self):
        full = self.draw("fig11", Settings(scale=QUICK)).read_bytes()
        holes = self.draw("fig11", Settings(scale=QUICK), skip=lambda r: r.system == "leed" and r.ssds == 7)
        self.assertNotEqual(full, holes.read_bytes())


class EndToEnd(unittest.TestCase):
    """reproduce.main with the stand-in harness: runs, JSON files, figures, exit status."""

    def main(self, *argv: str) -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = reproduce.main(["--no-venv", *argv])
        return code, out.getvalue()

    def test_runs_and_draws_and_reports_failures(self):
        results = Path(tempfile.mkdtemp())
        os.environ["FAKE_FAIL_SSDS"] = "5"
        try:
            code, log = self.main("--quick", "--bin", str(FAKE), "--results", str(results), "fig5", "fig12")
        finally:
            os.environ.pop("FAKE_FAIL_SSDS")
        self.assertEqual(code, 1, log)  # failed runs make the exit status non-zero
        self.assertIn("runs failed", log)
        self.assertIn("--ssds 5", log)
        self.assertEqual(len(list((results / "fig5").glob("*.json"))), 3)
        self.assertEqual(len(list((results / "fig11").glob("*.json"))), 45)  # fig12 ran fig11's runs
        check_png(self, results / "figures" / "fig5.png")
        check_png(self, results / "figures" / "fig12.png")
        # Redrawing from what is there runs nothing and succeeds.
        code, log = self.main("--quick", "--plot-only", "--bin", "/nonexistent", "--results", str(results), "fig5")
        self.assertEqual(code, 0, log)

    def test_dry_run_prints_commands_only(self):
        results = Path(tempfile.mkdtemp())
        code, log = self.main("--quick", "--dry-run", "--bin", str(FAKE), "--results", str(results), "fig13")
        self.assertEqual(code, 0)
        lines = [line for line in log.splitlines() if line.startswith(str(FAKE))]
        self.assertEqual(len(lines), 20)
        self.assertTrue(all("--ssd-iops" in line and "--json" in line for line in lines))
        self.assertFalse(any(results.iterdir()))


if __name__ == "__main__":
    unittest.main()
