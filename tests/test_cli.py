"""The command line, end to end, in subprocesses (as a user runs it)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bench(*args, cache: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENCH_CACHE": str(cache), "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or ROOT, timeout=600)


@pytest.fixture(scope="module")
def run_out(tmp_path_factory, cache_root, assets):
    out = tmp_path_factory.mktemp("cli")
    r = bench("run", "--methods", "original,ga", "--task", "digits-class", "--profile", "smoke", "--out", str(out),
              "--quiet", cache=cache_root)
    assert r.returncode == 0, r.stderr
    return out, r


def test_run_writes_cells_csv_tables_and_plots(run_out):
    out, r = run_out
    t = out / "digits-class"
    rows = list(csv.DictReader(open(t / "runs.csv")))
    assert {row["method"] for row in rows} == {"original", "ga"}
    required = {"method", "task", "forget_class", "seed", "profile", "ua", "retain_acc", "fid", "unlearn_s",
                "grad_steps", "backward_passes", "nfe", "peak_mem_unlearn_mb", "base_seed", "time_to_target_iters"}
    assert required <= set(rows[0])
    for name in ("table.md", "table.tex", "curves_smoke.png", "summary.json", "samples/ga_smoke.png"):
        assert (t / name).is_file(), name
    cells = list((t / "runs").iterdir())
    assert len(cells) == 2
    for c in cells:
        assert {"row.json", "config.json", "curve.csv", "samples.png"} <= {p.name for p in c.iterdir()}
    assert "| *original* |" in r.stdout and "| **ga** |" in r.stdout


def test_second_run_skips_complete_cells(run_out, cache_root):
    out, _ = run_out
    before = sorted(p.name for p in (out / "digits-class" / "runs").iterdir())
    r = bench("run", "--methods", "ga", "--task", "digits-class", "--profile", "smoke", "--out", str(out), "--quiet",
              cache=cache_root)
    assert r.returncode == 0 and "skip" in r.stderr
    assert sorted(p.name for p in (out / "digits-class" / "runs").iterdir()) == before


def test_table_rerenders_from_stored_runs(run_out, cache_root):
    out, _ = run_out
    (out / "digits-class" / "table.md").unlink()
    r = bench("table", str(out), cache=cache_root)
    assert r.returncode == 0 and (out / "digits-class" / "table.md").is_file() and "**ga**" in r.stdout
    assert "other harness code" not in r.stderr and "other method code" not in r.stderr  # made by this code


USER_MISTAKES = [
    (("run", "--methods", "salnu", "--task", "digits-class"), "unknown method 'salnu'. Did you mean salun"),
    (("run", "--methods", "ga", "--task", "digit-class"), "unknown task 'digit-class'. Did you mean digits-class?"),
    (("run", "--methods", "ga", "--task", "digits-class", "--forget-class", "12"), "--forget-class must be in 0..9"),
    (("run", "--methods", "ga", "--task", "digits-class", "--profile", "huge"), "has no profile 'huge'"),
    (("run", "--methods", "ga", "--task", "digits-class", "--set", "ga.lrr=1"), "has no option lrr"),
    (("run", "--methods", "ga", "--task", "digits-class", "--metrics", "fdi"), "unknown metric 'fdi'"),
    (("table", "/nonexistent/folder"), "no such folder"),
]


@pytest.mark.parametrize("args, needle", USER_MISTAKES)
def test_user_mistakes_get_one_line_and_exit_2(args, needle, cache_root, capsys, monkeypatch):
    """In-process (``bench.cli.main``, what ``python -m bench`` calls), to spare a Python start per case; the
    first case also runs as a subprocess, as a user runs it."""
    from bench.cli import main

    monkeypatch.setenv("BENCH_CACHE", str(cache_root))
    if args == USER_MISTAKES[0][0]:
        r = bench(*args, cache=cache_root)
        code, err = r.returncode, r.stderr
    else:
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
        err = capsys.readouterr().err
    assert code == 2
    assert needle in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_list_commands(cache_root, tmp_path):
    r = bench("list", "methods", cache=cache_root)
    assert r.returncode == 0 and "salun" in r.stdout and "citation" in r.stdout
    assert "ua" in bench("list", "metrics", cache=cache_root).stdout
    tasks = bench("list", "tasks", cache=cache_root).stdout
    assert "digits-class" in tasks and "digits-dit" in tasks and "base model dit" in tasks
    (tmp_path / "extra_method.py").write_text(
        "from dataclasses import dataclass\nfrom bench.method import Method, register_method\n"
        "@register_method('cli-plugin-test')\nclass P(Method):\n    @dataclass(frozen=True)\n    class Config:\n"
        "        iters: int = 0\n    paper = 'a dropped-in plugin'\n    def unlearn(self, ctx):\n"
        "        return ctx.sampler(ctx.base_model(trainable=False))\n")
    r = bench("list", "methods", "--plugins", str(tmp_path), cache=cache_root)
    assert "cli-plugin-test" in r.stdout and "a dropped-in plugin" in r.stdout
    line = next(x for x in r.stdout.splitlines() if x.startswith("cli-plugin-test"))
    assert line.split()[1] == "user"  # a plugin is not "reference" until the project has checked it


def test_method_names_are_case_insensitive(cache_root, tmp_path):
    r = bench("run", "--methods", "GA", "--task", "digits-class", "--profile", "smoke", "--steps", "1", "--out",
              str(tmp_path), "--quiet", cache=cache_root)
    assert r.returncode == 0, r.stderr
    assert {row["method"] for row in csv.DictReader(open(tmp_path / "digits-class" / "runs.csv"))} == {"ga"}
    r = bench("run", "--methods", "SALNU", "--task", "digits-class", cache=cache_root)
    assert r.returncode == 2 and "Did you mean salun" in r.stderr


@pytest.mark.parametrize("flag", ["--out", "--cache"])
def test_unusable_paths_fail_before_any_work(flag, cache_root, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for target, needle in ((a_file, "is a file, not a folder"), (a_file / "sub", "cannot be written")):
        r = bench("run", "--methods", "ga", "--task", "digits-class", "--profile", "smoke", flag, str(target),
                  "--quiet", cache=cache_root, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert needle in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "runs" / "digits-class" / "runs").exists()  # nothing ran


def test_a_crashing_method_is_recorded_and_the_others_still_run(cache_root, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "boom.py").write_text(
        "from dataclasses import dataclass\nfrom bench.method import Method, register_method\n"
        "@register_method('boom')\nclass Boom(Method):\n    @dataclass(frozen=True)\n    class Config:\n"
        "        iters: int = 0\n    def unlearn(self, ctx):\n        raise RuntimeError('kaboom')\n")
    out = tmp_path / "out"
    r = bench("run", "--methods", "boom,original", "--task", "digits-class", "--profile", "smoke", "--out", str(out),
              "--plugins", str(plugins), "--quiet", cache=cache_root)
    assert r.returncode == 1, r.stderr
    assert "RuntimeError: kaboom" in r.stderr and "1 complete, 1 failed" in r.stderr
    t = out / "digits-class"
    assert [row["method"] for row in csv.DictReader(open(t / "runs.csv"))] == ["original"]
    failures = list((t / "failures").glob("boom-*.json"))
    assert len(failures) == 1 and "kaboom" in failures[0].read_text()
    md = (t / "table.md").read_text()
    assert "Failures" in md and "kaboom" in md


def test_corrupt_cached_checkpoint_is_detected_and_rebuilt(cache_root, assets, tmp_path):
    from bench.core.cache import manifest_ok
    from bench.core.hashing import content_hash

    # a cache holding just the assets a smoke run uses: the session's base model and classifier
    base_src = assets.root / f"base-{content_hash(assets.base_key())}"
    clf_src = assets.root / f"classifier-{content_hash(assets.classifier_meta['key'])}"
    task = tmp_path / "cache" / "digits-class"
    base, clf = task / base_src.name, task / clf_src.name
    shutil.copytree(base_src, base)
    shutil.copytree(clf_src, clf)
    weights = base / "raw" / "diffusion_pytorch_model.safetensors"
    assert manifest_ok(base)
    weights.write_bytes(weights.read_bytes()[:-7] + b"garbage")
    assert not manifest_ok(base)  # a flipped byte in the base model can never be used silently
    (clf / "classifier.safetensors").write_bytes(b"not a safetensors file")
    shutil.rmtree(base)  # keep the test fast: rebuild only the (cheap) classifier
    shutil.copytree(base_src, base)
    r = bench("run", "--methods", "original", "--task", "digits-class", "--profile", "smoke", "--out",
              str(tmp_path / "out"), "--quiet", cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    assert "corrupt or incomplete; rebuilding" in r.stderr
    assert manifest_ok(clf)
