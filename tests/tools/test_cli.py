"""The command-line tools turn bad input into one line on stderr and exit code 2.

Most bad-input cases run `tools/run_suite.py`'s entry point in this process (its
`run_main(main)`, exactly what ``__main__`` runs), since a fresh interpreter costs
seconds of imports; the cases that are about the process itself (tracebacks from
loader workers, --import, --check-data) run the script.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_tool(*args, cwd=ROOT):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # micro models; the machine is shared
    return subprocess.run([sys.executable, str(ROOT / "tools" / args[0]), *args[1:]],
                          capture_output=True, text=True, cwd=cwd, timeout=300, env=env)


def error_lines(stderr):
    return [ln for ln in stderr.splitlines() if ln.strip() and " INFO " not in ln]  # log lines aside


@pytest.fixture(scope="module")
def run_suite():
    """tools/run_suite.py as a module (it imports its sibling `_cli`)."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        spec = importlib.util.spec_from_file_location("run_suite_under_test", ROOT / "tools" / "run_suite.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(ROOT / "tools"))


@pytest.fixture
def cli(run_suite, monkeypatch, capsys):
    """Run the suite's command line in-process: (exit code, stderr)."""

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["run_suite.py", *args])
        with pytest.raises(SystemExit) as e:
            run_suite.run_main(run_suite.main)
        return e.value.code, capsys.readouterr().err

    return run


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--backbone", "deit_huge"], "unknown backbone 'deit_huge'"),
        (["--methods", "pela,nope"], "unknown method 'nope'"),
        (["--tasks", "vqa"], "task 'vqa' needs a vision-language backbone"),
        (["--data-root", "/no/such/imagenet"], "--data cls=/no/such/imagenet does not exist"),
        (["--data", "cls=/no/such/imagenet"], "--data cls=/no/such/imagenet does not exist"),
        (["--teacher-weights", "/no/such/ckpt.pt"], "/no/such/ckpt.pt"),
        (["--ratio", "0.5"], "--ratio"),
        (["--recipe", "mine"], "recipe 'mine': choose one of official, paper"),
        (["--recipe", "paper,paper"], "--recipe lists a recipe twice"),
        (["--methods", "dense,svd_ft", "--recipe", "paper"], "--recipe applies to PELA's methods"),
        (["--set", "rwp_form=cubic"], "rwp_form"),
        (["--methods", "pela", "--set", "alpha=abc"], "option alpha='abc': pela expects a number or null"),
        (["--methods", "pela", "--set", "keep_full_rank=3"], "keep_full_rank"),
        (["--methods", "dense,svd", "--set", "alpha=1"], "apply to none of the methods"),
        (["--set", "alpha"], "--set 'alpha': expected KEY=VALUE"),
        (["--tasks", "seg", "--seg-root", "/no/such/ade"], "--data seg=/no/such/ade does not exist"),
        (["--tasks", "det", "--det-root", "/no/such/coco"], "--data det=/no/such/coco does not exist"),
        (["--data", "nosuch=/tmp"], "unknown task 'nosuch'"),
        (["--data", "seg=/tmp"], "--data seg=/tmp: task 'seg' is neither run nor the pre-training task"),
        (["--data", "cls"], "--data 'cls': expected KEY=VALUE"),
        (["--data-root", "/tmp/a", "--data", "cls=/tmp/b"], "--data-root /tmp/a and --data cls=/tmp/b disagree"),
        (["--tasks", "seg", "--data", "seg=/tmp/a", "--seg-root", "/tmp/b"], "--seg-root /tmp/b and --data seg=/tmp/a"),
        (["--tasks", "seg", "--methods", "tome"], "none of the methods tome applies to seg"),
        (["--tasks", "seg", "--methods", "pela", "--scale-batch"], "include 'dense'"),
        (["--tasks", "cls", "--methods", "dense,pela", "--scale-batch"], "applies to tasks that fine-tune"),
        (["--checkpoint-steps", "-1"], "checkpoint intervals must be >= 0"),
        (["--import", "no_such_plugin_module"], "--import no_such_plugin_module: ModuleNotFoundError: No module named"),
        (["--import", "/no/such/plugin.py"], "--import /no/such/plugin.py: no such file"),
        (["--data", "cls=/tmp/a", "--data", "cls=/tmp/b"], "--data cls is given twice"),
        (["--data", "classification=/tmp/a", "--data", "cls=/tmp/b"], "name the same task"),
        (["--device", "cudax"], "--device 'cudax': use auto, cpu or cuda[:N]"),
        (["--device", "tpu"], "--device 'tpu': use auto, cpu or cuda[:N]"),
    ],
)
def test_bad_input_is_one_line(cli, args, needle, tmp_path):
    code, stderr = cli(*args, "--out", str(tmp_path / "o"), "--results", str(tmp_path / "r"))
    assert code == 2, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()  # failed before any work


def test_mistyped_option_is_exactly_one_line_from_the_script(tmp_path):
    r = run_tool("run_suite.py", "--methods", "pela", "--set", "alpha=abc",
                 "--out", str(tmp_path / "o"), "--results", str(tmp_path / "r"))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == ["error: option alpha='abc': pela expects a number or null"], r.stderr
    assert not (tmp_path / "o").exists()


def test_check_data_names_a_corrupt_image_before_any_training(tmp_path):
    from tasks.synthetic import write_classification

    data = write_classification(tmp_path / "data", n_train=32, n_val=16, progress=False)
    victim = sorted((data / "train").rglob("*.png"))[5]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    r = run_tool("run_suite.py", "--data", f"cls={data}", "--check-data", "--budget", "tiny", "--methods", "dense",
                 "--quiet", "--out", str(tmp_path / "o"), "--results", str(tmp_path / "r"))
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error")]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-1500:]
    assert lines[0].startswith("error: cannot read image ") and str(victim) in lines[0], r.stderr[-1500:]
    assert "Traceback" not in r.stderr and "teacher: training" not in r.stderr
    assert not (tmp_path / "o" / "teachers").exists() and not (tmp_path / "r").exists()


def test_wrong_shape_teacher_checkpoint_is_one_line(tmp_path):
    import torch

    from backbones import create_backbone
    from tasks.synthetic import write_classification

    torch.save(create_backbone("deit_micro", num_classes=3).state_dict(), tmp_path / "t3.pt")
    data = write_classification(tmp_path / "data", n_train=16, n_val=16, progress=False)
    r = run_tool("run_suite.py", "--teacher-weights", str(tmp_path / "t3.pt"), "--data-root", str(data),
                 "--budget", "tiny", "--out", str(tmp_path / "o"), "--results", str(tmp_path / "r"), "--quiet")
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error")]
    assert r.returncode == 2 and len(lines) == 1 and "t3.pt" in lines[0] and "head.weight" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_list_with_an_imported_plugin_and_make_tables(tmp_path):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(
        "from methods import register_method\n"
        "from methods.dense import Dense\n\n"
        "register_method('plugin_identity')(type('PluginIdentity', (Dense,), {}))\n"
    )
    r = run_tool("run_suite.py", "--import", str(plugin), "--list")
    assert r.returncode == 0, r.stderr
    assert "deit_micro" in r.stdout and "pela" in r.stdout and "plugin_identity" in r.stdout
    assert "cls, det, grounding, retrieval, seg, ve, vlp, vqa, zeroshot" in r.stdout
    r = run_tool("run_suite.py", "--list")
    assert r.returncode == 0 and "plugin_identity" not in r.stdout
    # Nothing to rebuild from: one line naming the store, and nothing written.
    r = run_tool("make_tables.py", "--results", str(tmp_path))
    lines = error_lines(r.stderr)
    assert r.returncode == 2 and len(lines) == 1 and f"{tmp_path / 'results.jsonl'}: no results store" in lines[0]
    assert not (tmp_path / "leaderboard.md").exists()


def test_corrupt_training_image_is_named_in_one_line(tmp_path):
    """Without --check-data the image is met by a loader worker during training; still one line."""
    from tasks.synthetic import write_classification

    data = write_classification(tmp_path / "data", n_train=64, n_val=16, progress=False)
    victim = sorted((data / "train").rglob("*.png"))[3]
    victim.write_bytes(b"truncated")
    r = run_tool("run_suite.py", "--data-root", str(data), "--methods", "dense", "--budget", "tiny", "--quiet",
                 "--out", str(tmp_path / "o"), "--results", str(tmp_path / "r"))
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error")]
    assert r.returncode == 2 and len(lines) == 1 and victim.name in lines[0], r.stderr[-1500:]
    assert "Traceback" not in r.stderr


def test_tiny_training_split_is_refused(cli, tmp_path):
    from tasks.synthetic import write_classification

    data = write_classification(tmp_path / "data", n_train=16, n_val=16, progress=False)
    code, stderr = cli("--data", f"cls={data}", "--methods", "dense", "--budget", "tiny", "--quiet",
                       "--out", str(tmp_path / "o"), "--results", str(tmp_path / "r"))
    lines = error_lines(stderr)
    assert code == 2 and len(lines) == 1, stderr[-1500:]
    assert "the training split holds 16 samples, fewer than one batch (32)" in lines[0], stderr[-1500:]


def test_parse_args_data_flags_and_new_options(run_suite):
    cfg, quiet = run_suite.parse_args(["--tasks", "seg", "--data", "classification=/d/cls", "--seg-root", "/d/ade",
                                       "--data", "seg=/d/ade", "--check-data", "--checkpoint-minutes", "2.5",
                                       "--checkpoint-steps", "100", "--quiet"])
    assert cfg.data == {"cls": "/d/cls", "seg": "/d/ade"}  # aliases and task aliases, canonical names
    assert cfg.check_data and cfg.checkpoint_minutes == 2.5 and cfg.checkpoint_steps == 100 and quiet
    cfg, quiet = run_suite.parse_args(["--data-root", "/d/in", "--det-root", "/d/coco", "--tasks", "det"])
    assert cfg.data == {"cls": "/d/in", "det": "/d/coco"} and not cfg.check_data and not quiet
    cfg, _ = run_suite.parse_args([])
    assert cfg.data == {} and cfg.checkpoint_steps == 0 and cfg.checkpoint_minutes == 10.0 and cfg.budget == "smoke"
    cfg, _ = run_suite.parse_args(["--budget", "tiny", "--set", "alpha=0.5", "--set", "rwp_form=linear",
                                   "--set", 'keep_full_rank=["head*"]'])
    assert cfg.budget == "tiny"
    assert cfg.method_options == {"alpha": 0.5, "rwp_form": "linear", "keep_full_rank": ["head*"]}


def test_seed_flags(run_suite):
    cfg, _ = run_suite.parse_args([])
    assert cfg.seeds == (0, 1, 2) and cfg.teacher_seed == 0  # three seeds unless told otherwise
    cfg, _ = run_suite.parse_args(["--seeds", "0,1,2", "--teacher-seed", "3"])
    assert cfg.seeds == (0, 1, 2) and cfg.teacher_seed == 3
    cfg, _ = run_suite.parse_args(["--seed", "4"])
    assert cfg.seeds == (4,) and cfg.teacher_seed == 0  # one student seed, on the shared teacher
    for bad in (["--seeds", "0,x"], ["--seed", "1", "--seeds", "2,3"]):
        with pytest.raises(SystemExit):
            run_suite.parse_args(bad)


def test_recipe_flag_takes_one_or_both(run_suite):
    assert run_suite.parse_args([])[0].recipes == ()  # the default recipe
    assert run_suite.parse_args(["--recipe", "paper"])[0].recipes == ("paper",)
    assert run_suite.parse_args(["--recipe", "official,paper", "--methods", "pela"])[0].recipes == ("official", "paper")


def test_ratio_with_default_methods_runs_the_factorising_ones(run_suite):
    cfg, _ = run_suite.parse_args(["--ratio", "3"])
    assert cfg.ratios == (3.0,)
    assert "pela" in cfg.methods and "svd" in cfg.methods and "pc_lora" in cfg.methods
    assert not {"lora", "tome", "tinybert", "maskalign"} & set(cfg.methods)
    cfg, _ = run_suite.parse_args([])
    assert "lora" in cfg.methods and cfg.ratios == ()
    cfg, _ = run_suite.parse_args(["--ratio", "1.5,2,3,5,10", "--methods", "svd,pela"])  # Fig. 4's sweep
    assert cfg.ratios == (1.5, 2.0, 3.0, 5.0, 10.0)
    with pytest.raises(SystemExit):
        run_suite.parse_args(["--ratio", "2,x"])
    # Tables 2/3's Swin: the dense-task defaults, narrowed to those that factorise.
    cfg, _ = run_suite.parse_args(["--backbone", "swin_base", "--tasks", "seg,det", "--ratio", "2",
                                   "--set", 'keep_full_rank=["head*","patch_embed*","norm","downsample*"]'])
    assert cfg.methods == ("dense", "svd", "pela", "pc_lora")
    assert cfg.method_options["keep_full_rank"] == ["head*", "patch_embed*", "norm", "downsample*"]


def test_default_methods_come_from_the_tasks_paper_tables(run_suite):
    from tasks import create_task

    every = ("dense", "svd", "pela", "tome")
    seg = create_task("seg").paper_methods
    assert run_suite.default_methods(("seg",), every) == seg and "tome" not in seg
    assert run_suite.default_methods(("seg", "det"), every) == seg
    assert run_suite.default_methods(("cls", "seg"), every) == every  # cls names no table: every method
    cfg, _ = run_suite.parse_args(["--tasks", "seg,det"])
    assert cfg.methods == seg


def test_a_plugin_that_fails_on_import_is_one_line(cli, tmp_path):
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text("raise ValueError('bad registration')\n")
    code, stderr = cli("--import", str(plugin), "--out", str(tmp_path / "o"), "--results", str(tmp_path / "r"))
    assert code == 2
    assert error_lines(stderr) == [f"error: --import {plugin}: ValueError: bad registration"]
