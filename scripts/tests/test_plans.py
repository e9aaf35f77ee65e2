"""The command lines each figure generates (no harness needed)."""

import contextlib
import io
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import reproduce  # noqa: E402
from figures.plans import FIGURES, fixed_cache_buckets  # noqa: E402
from figures.runs import Emulation, Run  # noqa: E402
from figures.settings import DEFAULT_EMULATION, DEFAULT_WORKERS, FULL, QUICK, Settings  # noqa: E402

BIN = "/x/scalio-ycsb"


def commands(key: str, settings: Settings) -> list[list[str]]:
    return [run.args(BIN, f"/r/{run.name()}.json") for run in FIGURES[key].plan(settings)]


def flag(cmd: list[str], name: str) -> str | None:
    """The value after `name` (None if absent)."""
    return cmd[cmd.index(name) + 1] if name in cmd else None


def props(cmd: list[str]) -> dict[str, str]:
    return dict(cmd[i + 1].split("=", 1) for i, a in enumerate(cmd) if a == "-p")


QUICK_SETTINGS = Settings(scale=QUICK)


class Fig11(unittest.TestCase):
    def test_quick_sweeps_ssd_counts_systems_and_workloads(self):
        cmds = commands("fig11", QUICK_SETTINGS)
        self.assertEqual(len(cmds), 4 * 3 * 5)
        self.assertEqual({flag(c, "--ssds") for c in cmds}, {"1", "3", "5", "7"})
        self.assertEqual({flag(c, "--system") for c in cmds}, {"scalio", "leed", "ditto"})
        self.assertEqual({flag(c, "--workload") for c in cmds}, {"a", "b", "c", "d", "f"})
        # Every (workload, system, ssds) combination exactly once.
        combos = {(flag(c, "--workload"), flag(c, "--system"), flag(c, "--ssds")) for c in cmds}
        self.assertEqual(len(combos), len(cmds))

    def test_scalio_is_stage_3_and_baselines_have_no_stage(self):
        for c in commands("fig11", QUICK_SETTINGS):
            if flag(c, "--system") == "scalio":
                self.assertEqual(flag(c, "--stage"), "3")
            else:
                self.assertNotIn("--stage", c)

    def test_every_run_carries_the_emulation_knobs_and_paper_defaults(self):
        e = DEFAULT_EMULATION
        for c in commands("fig11", QUICK_SETTINGS):
            self.assertEqual(c[0], BIN)
            self.assertEqual(flag(c, "--ssd-iops"), str(e.ssd_iops))
            self.assertEqual(flag(c, "--ssd-latency-us"), str(e.ssd_latency_us))
            self.assertEqual(flag(c, "--worker-io-cost-us"), str(e.worker_io_cost_us))
            self.assertEqual(flag(c, "--workers"), str(DEFAULT_WORKERS))
            self.assertEqual(flag(c, "--cache-ratio"), "0.112")
            self.assertEqual(int(flag(c, "--threads")) * int(flag(c, "--outstanding")), 512)
            self.assertEqual(props(c), {"recordcount": str(QUICK.records), "operationcount": str(QUICK.operations), "zipfianconstant": "0.99"})
            self.assertTrue(flag(c, "--json").endswith(".json"))

    def test_full_scale_has_all_ssd_counts_and_a_bigger_dataset(self):
        cmds = commands("fig11", Settings(scale=FULL))
        self.assertEqual({int(flag(c, "--ssds")) for c in cmds}, set(range(1, 8)))
        self.assertEqual(len(cmds), 7 * 3 * 5)
        self.assertGreater(int(props(cmds[0])["recordcount"]), QUICK.records)

    def test_fig12_uses_the_runs_of_fig11(self):
        self.assertEqual(FIGURES["fig12"].plan(QUICK_SETTINGS), FIGURES["fig11"].plan(QUICK_SETTINGS))
        self.assertEqual(FIGURES["fig12"].results_dir, FIGURES["fig11"].results_dir)


class OtherFigures(unittest.TestCase):
    def test_fig5_is_leed_ycsb_c_without_skew(self):
        cmds = commands("fig5", QUICK_SETTINGS)
        self.assertEqual([flag(c, "--ssds") for c in cmds], ["1", "3", "5", "7"])
        for c in cmds:
            self.assertEqual((flag(c, "--system"), flag(c, "--workload")), ("leed", "c"))
            self.assertEqual(props(c)["zipfianconstant"], "0")

    def test_fig13_has_stages_0_to_3_on_7_ssds(self):
        cmds = commands("fig13", QUICK_SETTINGS)
        self.assertEqual(len(cmds), 4 * 5)
        for w in "abcdf":
            stages = sorted(flag(c, "--stage") for c in cmds if flag(c, "--workload") == w)
            self.assertEqual(stages, ["0", "1", "2", "3"])
        self.assertEqual({flag(c, "--ssds") for c in cmds}, {"7"})

    def test_fig14_batches_by_outstanding(self):
        cmds = commands("fig14", Settings(scale=FULL))
        seen = set()
        for c in cmds:
            io = int(flag(c, "--threads")) * int(flag(c, "--outstanding"))
            seen.add(io)
            if flag(c, "--system") == "scalio" and flag(c, "--stage") == "3":
                self.assertEqual(int(flag(c, "--batch")), min(io // 16, 8))
            elif flag(c, "--system") == "scalio":
                self.assertEqual((flag(c, "--stage"), flag(c, "--batch")), ("2", "1"))
            else:
                self.assertEqual(flag(c, "--system"), "ditto")
        self.assertEqual(seen, {32, 64, 128, 256, 512})
        self.assertEqual(len(cmds), 5 * 3 * 5)

    def test_fig15_sweeps_skew_without_workload_d(self):
        cmds = commands("fig15", Settings(scale=FULL))
        self.assertEqual({props(c)["zipfianconstant"] for c in cmds}, {"0.5", "0.9", "0.99", "1.01"})
        self.assertEqual({flag(c, "--workload") for c in cmds}, {"a", "b", "c", "f"})
        self.assertEqual({flag(c, "--system") for c in cmds}, {"scalio", "ditto"})

    def test_fig16_grows_records_with_a_fixed_cache(self):
        cmds = commands("fig16", Settings(scale=FULL))
        base = FULL.records
        self.assertEqual({int(props(c)["recordcount"]) for c in cmds}, {base, 2 * base, 3 * base, 4 * base})
        buckets = {flag(c, "--cache-buckets") for c in cmds}
        self.assertEqual(buckets, {str(fixed_cache_buckets(base, 0.112))})
        self.assertTrue(all("--cache-ratio" not in c for c in cmds))

    def test_fig17_maps_paper_cores_to_workers_and_outstanding(self):
        cmds = commands("fig17", QUICK_SETTINGS)
        pairs = {(flag(c, "--workers"), int(flag(c, "--threads")) * int(flag(c, "--outstanding"))) for c in cmds}
        self.assertEqual(pairs, {("2", 256), ("4", 512), ("8", 1024)})

    def test_fig18_varies_assoc_with_fixed_bucket_count(self):
        cmds = commands("fig18", QUICK_SETTINGS)
        self.assertEqual({flag(c, "--assoc") for c in cmds}, {"4", "8", "16"})
        self.assertEqual({flag(c, "--cache-buckets") for c in cmds}, {str(fixed_cache_buckets(QUICK.records, 0.112))})
        self.assertEqual({flag(c, "--system") for c in cmds}, {"scalio"})

    def test_quick_all_stays_small(self):
        total = sum(len(FIGURES[k].plan(QUICK_SETTINGS)) for k in FIGURES if k != "fig12")
        full = sum(len(FIGURES[k].plan(Settings(scale=FULL))) for k in FIGURES if k != "fig12")
        self.assertLess(total, full / 2)


class CommandLineOptions(unittest.TestCase):
    def test_emulation_and_worker_overrides_reach_every_command(self):
        args = reproduce.parse_args(["--quick", "--ssd-iops", "8000", "--worker-io-cost-us", "40", "--workers", "3", "all"])
        s = reproduce.settings_of(args)
        for key in FIGURES:
            for c in commands(key, s):
                self.assertEqual(flag(c, "--ssd-iops"), "8000")
                self.assertEqual(flag(c, "--worker-io-cost-us"), "40")
                if key != "fig17":
                    self.assertEqual(flag(c, "--workers"), "3")

    def test_workload_filter(self):
        s = reproduce.settings_of(reproduce.parse_args(["--quick", "--workloads", "A,workloadc", "fig11"]))
        self.assertEqual({flag(c, "--workload") for c in commands("fig11", s)}, {"a", "c"})
        err = io.StringIO()
        with self.assertRaises(SystemExit), contextlib.redirect_stderr(err):
            reproduce.parse_args(["--workloads", "e", "fig11"])
        self.assertIn("unknown workload(s) e", err.getvalue())

    def test_all_expands_in_order_without_duplicates(self):
        self.assertEqual(reproduce.expand(["fig12", "all"])[:2], ["fig12", "fig15"])
        everything = reproduce.expand(["all"])
        self.assertLess(everything.index("fig11"), everything.index("fig12"))  # fig12 draws fig11's runs
        self.assertEqual(len(reproduce.expand(["all", "fig5"])), len(FIGURES))


class RunNames(unittest.TestCase):
    def test_names_are_unique_within_every_plan(self):
        for key, fig in FIGURES.items():
            names = [r.name() for r in fig.plan(Settings(scale=FULL))]
            self.assertEqual(len(names), len(set(names)), key)

    def test_name_changes_with_every_parameter(self):
        base = QUICK_SETTINGS.run("scalio", "a")
        variants = [
            base.with_(ssds=3), base.with_(workers=4), base.with_(outstanding=8), base.with_(batch=1),
            base.with_(assoc=16), base.with_(cache_ratio=0.2), base.with_(records=5), base.with_(operations=5),
            base.with_(zipf=0.5), base.with_(seed=9), base.with_(warmup_ops=10), base.with_(stage=2),
            base.with_(emulation=Emulation(1, 2, 3)), base.with_(cache_ratio=None, cache_buckets=7),
        ]  # fmt: skip
        names = {base.name()} | {v.name() for v in variants}
        self.assertEqual(len(names), len(variants) + 1)

    def test_invalid_runs_are_refused(self):
        e = DEFAULT_EMULATION
        with self.assertRaises(ValueError):
            Run(system="leed", workload="a", emulation=e, stage=3)
        with self.assertRaises(ValueError):
            Run(system="scalio", workload="a", emulation=e)
        with self.assertRaises(ValueError):
            Run(system="rocksdb", workload="a", emulation=e)
        with self.assertRaises(ValueError):
            Run(system="leed", workload="a", emulation=e, cache_ratio=0.1, cache_buckets=4)


if __name__ == "__main__":
    unittest.main()


class PaperScale(unittest.TestCase):
    def test_paper_runs_use_the_papers_dataset_cache_and_reused_stores(self):
        args = reproduce.parse_args(["--paper", "--results", "/r", "all"])
        s = reproduce.settings_of(args)
        for key in ("fig11", "fig15", "fig17"):
            for c in commands(key, s):
                self.assertEqual(props(c)["recordcount"], "20000000")
                self.assertEqual(flag(c, "--cache-buckets"), "280576")  # x 8 slots = 2,244,608
                self.assertEqual(flag(c, "--store-dir"), "/r/stores")
                # Only a run with a cache is warmed: LEED has none.
                self.assertEqual(flag(c, "--warmup-ops"), None if flag(c, "--system") == "leed" else "12000000")
        # The cache stays the paper's as the dataset grows (fig16), and per bucket in fig18.
        self.assertEqual({flag(c, "--cache-buckets") for c in commands("fig16", s)}, {"280576"})
        self.assertEqual({flag(c, "--cache-buckets") for c in commands("fig18", s)}, {"280576"})
        self.assertEqual({props(c)["recordcount"] for c in commands("fig16", s)}, {"20000000", "40000000"})

    def test_a_cache_with_more_slots_per_bucket_may_warm_longer(self):
        s = reproduce.settings_of(reproduce.parse_args(["--paper", "fig18"]))
        caps = {flag(c, "--assoc"): flag(c, "--warmup-ops") for c in commands("fig18", s)}
        self.assertEqual(caps, {"4": "12000000", "8": "12000000", "16": "24000000"})

    def test_stages_without_a_cache_are_not_warmed(self):
        s = reproduce.settings_of(reproduce.parse_args(["--paper", "all"]))
        warm = {flag(c, "--stage"): flag(c, "--warmup-ops") for c in commands("fig13", s)}
        self.assertEqual(warm, {"0": None, "1": None, "2": "12000000", "3": "12000000"})

    def test_paper_all_needs_three_stores(self):
        """Every paper run opens one of three stores (20M on 3 and 7 SSDs, 40M on 7): each is a
        load of minutes, so a plan that needed more would not fit its time."""
        s = reproduce.settings_of(reproduce.parse_args(["--paper", "all"]))
        runs = {r.name(): r for key in FIGURES for r in FIGURES[key].plan(s)}
        # Workload D's inserts size the store differently; the paper scale runs none.
        self.assertNotIn("d", {r.workload for r in runs.values()})
        self.assertEqual({(r.records, r.ssds) for r in runs.values()},
                         {(20_000_000, 3), (20_000_000, 7), (40_000_000, 7)})  # fmt: skip
        self.assertLessEqual(len(runs), 55)

    def test_paper_figures_say_what_they_leave_out(self):
        s = reproduce.settings_of(reproduce.parse_args(["--paper", "all"]))
        self.assertEqual(set(s.scale.reductions), set(FIGURES))
        self.assertEqual(reproduce.settings_of(reproduce.parse_args(["--quick", "all"])).scale.reductions, {})

    def test_the_store_directory_is_not_part_of_a_runs_name(self):
        s = Settings(scale=QUICK)
        with_stores = Settings(scale=QUICK, store_dir="/s")
        a, b = FIGURES["fig15"].plan(s), FIGURES["fig15"].plan(with_stores)
        self.assertEqual([r.name() for r in a], [r.name() for r in b])
        self.assertNotIn("--store-dir", a[0].args(BIN, "/r/x.json"))
        self.assertEqual(flag(b[0].args(BIN, "/r/x.json"), "--store-dir"), "/s")

    def test_quick_keeps_a_fresh_load_per_run(self):
        s = reproduce.settings_of(reproduce.parse_args(["--quick", "all"]))
        self.assertIsNone(s.store_dir)
        self.assertTrue(all("--store-dir" not in c and "--warmup-ops" not in c for c in commands("fig15", s)))


class Stores(unittest.TestCase):
    def test_least_recently_used_stores_go_first_and_the_latest_stays(self):
        import os
        import tempfile

        from figures import stores

        root = Path(tempfile.mkdtemp())
        for i, name in enumerate(("old", "mid", "new")):
            d = root / name
            d.mkdir()
            f = d / "ssd0.img"
            f.write_bytes(b"x" * 65536)
            os.utime(f, (1000 + i, 1000 + i))
        one = stores.disk_usage(root / "old")
        self.assertGreaterEqual(one, 65536)
        deleted = stores.trim(root, budget_bytes=one * 1.5, log=lambda m: None)
        self.assertEqual([d.name for d in deleted], ["old", "mid"])
        self.assertEqual(sorted(d.name for d in root.iterdir()), ["new"])
        self.assertEqual(stores.trim(root, budget_bytes=0, log=lambda m: None), [])  # the latest stays
