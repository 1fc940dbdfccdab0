"""``bench reproduce`` remakes a results folder from its ``reproduce.json`` and drops the cells of other code
(bench/cli/reproduce.py); every committed CPU results folder records the commands that remake it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.cli import build_parser, main
from bench.cli.reproduce import read_recipe

ROOT = Path(__file__).resolve().parents[1]
GPU_FOLDERS = {"cifar10-class"}  # made on a GPU machine: its page says which code made it
FOLDERS = sorted(p.parent for p in (ROOT / "results").glob("**/runs") if p.parent.name not in GPU_FOLDERS
                 and (p.parent / "runs.csv").is_file())


def test_the_committed_cpu_folders_are_found():
    names = {str(f.relative_to(ROOT / "results")) for f in FOLDERS}
    assert {"digits-class", "fashion-mnist-class", "sd-digits", "robustness/digits-class"} <= names


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: str(f.relative_to(ROOT / "results")))
def test_every_cpu_results_folder_records_commands_the_cli_accepts(folder):
    for cmd in read_recipe(folder):
        args = build_parser().parse_args([*cmd["argv"], "--out", str(folder.parent)])
        assert args.task == folder.name


def _recipe(folder: Path, *commands: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "reproduce.json").write_text(json.dumps({"commands": [{"argv": c} for c in commands]}))


@pytest.mark.parametrize("argv, message", [
    (None, "records no commands (reproduce.json is missing)"),
    (["table", "x"], "is 'bench table'; reproduce runs run, sweep, pretrain"),
    (["run", "--methods", "ga", "--task", "digits-class", "--out", "elsewhere"], "sets --out"),
    (["run", "--methods", "ga", "--task", "sd-digits"], "is for task 'sd-digits', not this folder's 'digits-class'"),
])
def test_a_bad_recipe_is_one_clear_error(tmp_path, capsys, argv, message):
    folder = tmp_path / "digits-class"
    folder.mkdir()
    if argv is not None:
        _recipe(folder, argv)
    assert main(["reproduce", str(folder)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.fixture
def ga_folder(tmp_path, cache_root, assets, capsys):
    """``(folder, argv, stale)``: a results folder holding one real GA cell made by ``argv`` and a copy of it
    stamped as made by other harness code (``stale``, its name)."""
    folder = tmp_path / "results" / "digits-class"
    argv = ["run", "--methods", "ga", "--task", "digits-class", "--profile", "smoke", "--seed", "0",
            "--cache", str(cache_root), "--quiet"]
    assert main([*argv, "--out", str(folder.parent)]) == 0
    (cell,) = (folder / "runs").iterdir()
    old = folder / "runs" / f"{cell.name}-old"
    shutil.copytree(cell, old)
    row = json.loads((old / "row.json").read_text())
    row["harness_code"] = "0ld0ld0ld0ld"
    (old / "row.json").write_text(json.dumps(row))
    capsys.readouterr()
    return folder, argv, old.name


def test_reproduce_reruns_the_commands_then_drops_cells_of_other_code(ga_folder, capsys):
    folder, argv, stale = ga_folder
    _recipe(folder, argv)
    (folder / "samples" / "ga_harness_0ld0ld.png").write_bytes(b"grid of a row that is about to go")
    assert main(["reproduce", str(folder), "--dry-run"]) == 0
    assert "1 cell(s) made by other code would be removed" in capsys.readouterr().err
    assert (folder / "runs" / stale).is_dir()

    assert main(["reproduce", str(folder)]) == 0
    err = capsys.readouterr().err
    assert "[1/1] python -m bench run --methods ga" in err and "removed 1 cell(s) made by other code" in err
    assert [p.name for p in (folder / "runs").iterdir()] == [stale.removesuffix("-old")]
    runs = (folder / "runs.csv").read_text().splitlines()
    assert len(runs) == 2  # the header and the current cell: the tables no longer count the old one
    assert [p.name for p in (folder / "samples").iterdir()] == ["ga_smoke.png"]  # the old row's grid is gone


def test_cells_of_other_code_below_the_folder_go_only_where_the_commands_remade_cells(ga_folder, capsys):
    folder, argv, stale = ga_folder
    _recipe(folder, argv)
    current = folder / "runs" / stale.removesuffix("-old")
    remade = folder / "base-curve-runs" / "steps-400" / "digits-class" / "runs"
    untouched = folder / "base-curve-runs" / "steps-800" / "digits-class" / "runs"
    for runs in (remade, untouched):
        shutil.copytree(folder / "runs" / stale, runs / stale)
    shutil.copytree(current, remade / current.name)
    assert main(["reproduce", str(folder), "--dry-run"]) == 0
    assert "2 cell(s) made by other code would be removed" in capsys.readouterr().err
    assert main(["reproduce", str(folder)]) == 0
    assert "removed 2 cell(s) made by other code" in capsys.readouterr().err
    assert [p.name for p in remade.iterdir()] == [current.name]
    assert [p.name for p in untouched.iterdir()] == [stale]  # the summary made from it keeps its cells


def test_a_failing_command_stops_reproduce_and_removes_nothing(ga_folder, capsys):
    folder, _, stale = ga_folder
    _recipe(folder, ["run", "--methods", "nosuchmethod", "--task", "digits-class", "--profile", "smoke"])
    assert main(["reproduce", str(folder)]) == 2
    assert "command 1 of 1 failed (exit 2); nothing was removed" in capsys.readouterr().err
    assert (folder / "runs" / stale).is_dir()


@pytest.mark.parametrize("only", ["3", "0", "x", ""])
def test_only_names_existing_commands(tmp_path, capsys, only):
    folder = tmp_path / "digits-class"
    _recipe(folder, ["run", "--methods", "ga", "--task", "digits-class"], ["run", "--methods", "rl", "--task",
                                                                            "digits-class"])
    assert main(["reproduce", str(folder), "--dry-run", "--only", only]) == 2
    assert "--only takes command numbers between 1 and 2" in capsys.readouterr().err


def test_dry_run_lists_only_the_chosen_commands(tmp_path, capsys):
    folder = tmp_path / "digits-class"
    _recipe(folder, ["run", "--methods", "ga", "--task", "digits-class"], ["run", "--methods", "rl", "--task",
                                                                            "digits-class"])
    assert main(["reproduce", str(folder), "--dry-run", "--only", "2"]) == 0
    err = capsys.readouterr().err
    assert "[2/2] python -m bench run --methods rl" in err and "--methods ga" not in err
