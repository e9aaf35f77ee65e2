"""Loading result JSON and extracting the plotted series."""

import json
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from figures import results as R  # noqa: E402
from figures.plans import FIGURES  # noqa: E402
from figures.runs import Emulation  # noqa: E402
from figures.settings import QUICK, Settings  # noqa: E402
from synthetic import result_for, write_results  # noqa: E402


class Loading(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp())
        self.run = Settings(scale=QUICK).run("scalio", "c")

    def write(self, text: str) -> Path:
        p = self.dir / "r.json"
        p.write_text(text)
        return p

    def test_a_spec_result_loads(self):
        r = R.load_result(self.write(json.dumps(result_for(self.run))))
        self.assertEqual(r["label"], "scalio-stage3")

    def test_bad_files_are_refused_with_the_reason(self):
        good = result_for(self.run)
        cases = {
            "not JSON": "{",
            "schema": json.dumps({**good, "schema": 2}),
            "JSON object": "[1, 2]",
            "run.throughput": json.dumps({**good, "run": {**good["run"], "throughput": None}}),
        }
        for reason, text in cases.items():
            with self.assertRaises(R.ResultError) as ctx:
                R.load_result(self.write(text))
            self.assertIn(reason.split()[-1], str(ctx.exception), reason)
        with self.assertRaises(R.ResultError):
            R.load_result(self.dir / "absent.json")

    def test_metrics_read_the_spec_fields_and_null_is_none(self):
        r = result_for(self.run)
        r["run"].update(throughput=1234.5, cache_hit_ratio=0.25, ssd_iops=999.0, worker_cores=1.5)
        r["run"]["latency"]["ALL"]["avg_us"] = 77.0
        self.assertEqual(R.throughput(r), 1234.5)
        self.assertEqual(R.hit_ratio(r), 0.25)
        self.assertEqual(R.ssd_iops(r), 999.0)
        self.assertEqual(R.worker_cores(r), 1.5)
        self.assertEqual(R.avg_latency_us(r), 77.0)
        r["run"].update(cache_hit_ratio=None, ssd_iops=None)
        del r["run"]["latency"]["ALL"]
        self.assertIsNone(R.hit_ratio(r))
        self.assertIsNone(R.ssd_iops(r))
        self.assertIsNone(R.avg_latency_us(r))


class Series(unittest.TestCase):
    def test_series_are_sorted_and_missing_runs_are_none(self):
        runs = FIGURES["fig11"].plan(Settings(scale=QUICK))
        d = Path(tempfile.mkdtemp())
        write_results(runs, d, skip=lambda r: r.system == "leed" and r.ssds == 5)
        points = R.collect(runs, d)
        self.assertEqual(len(points), len(runs))
        s = R.series(points, lambda r: r.ssds, R.throughput, system="leed", workload="c")
        self.assertEqual([x for x, _ in s], [1, 3, 5, 7])
        self.assertIsNone(s[2][1])
        self.assertTrue(all(y is not None and y > 0 for x, y in s if x != 5))
        expected = result_for(next(r for r in runs if r.system == "leed" and r.workload == "c" and r.ssds == 7))
        self.assertAlmostEqual(s[3][1], expected["run"]["throughput"])
        self.assertEqual(len(R.missing(points)), 5)  # one per workload
        # LEED has no cache: its hit-ratio series is all None, Scalio's is not.
        self.assertTrue(all(y is None for _, y in R.series(points, lambda r: r.ssds, R.hit_ratio, system="leed")))
        ditto_hits = R.series(points, lambda r: r.ssds, R.hit_ratio, system="ditto")
        self.assertTrue(all(y is not None for _, y in ditto_hits))

    def test_lacking_fields_names_what_no_result_has(self):
        runs = FIGURES["fig5"].plan(Settings(scale=QUICK))
        d = Path(tempfile.mkdtemp())
        for run in runs:
            r = result_for(run)
            r["run"]["worker_cores"] = None
            (d / f"{run.name()}.json").write_text(json.dumps(r))
        points = R.collect(runs, d)
        self.assertEqual(R.lacking_fields(points, ["run.throughput", "run.worker_cores"]), ["run.worker_cores"])


class TestbedNote(unittest.TestCase):
    def test_note_reads_the_emulation_block_and_sizes_from_the_json(self):
        s = Settings(scale=QUICK, emulation=Emulation(1234, 56, 78), workers=3)
        runs = FIGURES["fig16"].plan(s)
        d = Path(tempfile.mkdtemp())
        write_results(runs, d)
        note = R.testbed_note(R.collect(runs, d))
        for text in ("Emulated", "1,234 IOPS", "56 µs", "78 µs per SSD I/O", "3 workers", "10,000/20,000/40,000 records"):
            self.assertIn(text, note)

    def test_note_leaves_out_a_cache_no_result_has(self):
        run = Settings(scale=QUICK).run("leed", "c")
        r = result_for(run)
        r["config"].update(cache_buckets=None, cache_slots=None)
        d = Path(tempfile.mkdtemp())
        (d / f"{run.name()}.json").write_text(json.dumps(r))
        note = R.testbed_note(R.collect([run], d))
        self.assertNotIn("cache", note)
        self.assertIn("64-B values.", note)

    def test_unemulated_results_say_so(self):
        run = Settings(scale=QUICK, emulation=Emulation(0, 0, 0)).run("leed", "c")
        d = Path(tempfile.mkdtemp())
        write_results([run], d)
        note = R.testbed_note(R.collect([run], d))
        self.assertTrue(note.startswith("Not emulated"), note)
        self.assertEqual(R.testbed_note(R.collect([run], d / "nothing")), "No results.")


if __name__ == "__main__":
    unittest.main()
