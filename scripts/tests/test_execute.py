"""Running plans against a stand-in harness (tests/fake_scalio_ycsb.py): files, skips, reuse, failures."""

import json
import os
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from figures.execute import execute, failure_path, result_path  # noqa: E402
from figures.plans import FIGURES  # noqa: E402
from figures.results import load_result  # noqa: E402
from figures.settings import QUICK, Settings  # noqa: E402

FAKE = Path(__file__).resolve().parent / "fake_scalio_ycsb.py"


class Execute(unittest.TestCase):
    def setUp(self):
        self.root = Path(tempfile.mkdtemp())
        self.runs = FIGURES["fig5"].plan(Settings(scale=QUICK))
        self.logged: list[str] = []
        os.environ.pop("FAKE_FAIL_SSDS", None)

    def tearDown(self):
        os.environ.pop("FAKE_FAIL_SSDS", None)

    def go(self, fig="fig5", runs=None, **kw):
        return execute(runs or self.runs, self.root / fig, FAKE, results_root=self.root, timeout_s=60,
                       log=self.logged.append, tag=fig, **kw)  # fmt: skip

    def test_every_run_writes_its_json_and_a_second_pass_skips_them(self):
        out = self.go()
        self.assertEqual((out.ran, out.skipped, out.failures), (4, 0, []))
        for run in self.runs:
            r = load_result(result_path(self.root / "fig5", run))
            self.assertEqual(r["config"]["ssds"], run.ssds)
            self.assertEqual(r["emulation"]["ssd_iops"], run.emulation.ssd_iops)
        self.assertFalse(list((self.root / "fig5").glob(".*.tmp")))
        again = self.go()
        self.assertEqual((again.ran, again.skipped), (0, 4))
        forced = self.go(force=True)
        self.assertEqual(forced.ran, 4)

    def test_a_failed_run_is_reported_with_command_and_stderr_and_others_go_on(self):
        os.environ["FAKE_FAIL_SSDS"] = "3"
        out = self.go()
        self.assertEqual(out.ran, 3)
        self.assertEqual(len(out.failures), 1)
        f = out.failures[0]
        self.assertEqual(f.run.ssds, 3)
        self.assertIn("exit status 3", f.reason)
        report = f.report()
        self.assertIn("--ssds 3", report)
        self.assertIn("emulated failure with 3 SSDs", report)
        failed_run = self.runs[1]
        self.assertFalse(result_path(self.root / "fig5", failed_run).exists())
        self.assertIn("emulated failure", failure_path(self.root / "fig5", failed_run).read_text())
        # The next invocation retries it; once it succeeds the failure note goes away.
        os.environ.pop("FAKE_FAIL_SSDS")
        retry = self.go()
        self.assertEqual((retry.ran, retry.skipped, retry.failures), (1, 3, []))
        self.assertFalse(failure_path(self.root / "fig5", failed_run).exists())

    def test_a_run_with_unreadable_json_counts_as_failed(self):
        run = self.runs[0]
        (self.root / "fig5").mkdir(parents=True)
        result_path(self.root / "fig5", run).write_text("{truncated")
        out = self.go(runs=[run])  # the broken file is not taken as a result: the run is redone
        self.assertEqual(out.ran, 1)
        self.assertEqual(load_result(result_path(self.root / "fig5", run))["schema"], 1)

    def test_same_run_in_another_figure_is_reused(self):
        self.go()
        out = self.go(fig="other")
        self.assertEqual((out.ran, out.reused), (0, 4))
        self.assertEqual(
            json.loads(result_path(self.root / "other", self.runs[0]).read_text()),
            json.loads(result_path(self.root / "fig5", self.runs[0]).read_text()),
        )

    def test_force_runs_each_run_once_per_invocation(self):
        attempted = set()
        first = self.go(force=True, attempted=attempted)
        second = self.go(fig="other", force=True, attempted=attempted)
        third = self.go(force=True, attempted=attempted)
        self.assertEqual((first.ran, second.ran, second.reused, third.ran, third.skipped), (4, 0, 4, 0, 4))

    def test_dry_run_lists_commands_and_writes_nothing(self):
        out = self.go(dry_run=True)
        self.assertEqual(len(out.would_run), 4)
        self.assertEqual(out.would_run[0][0], str(FAKE))
        self.assertFalse((self.root / "fig5").exists())


if __name__ == "__main__":
    unittest.main()
