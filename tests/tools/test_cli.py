"""The command-line tools turn bad input into one line on stderr and exit code 2."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_tool(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "tools" / args[0]), *args[1:]],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--backbone", "deit_huge"], "unknown backbone 'deit_huge'"),
        (["--methods", "pela,nope"], "unknown method 'nope'"),
        (["--tasks", "vqa"], "task 'vqa' is not implemented yet"),
        (["--data-root", "/no/such/imagenet"], "/no/such/imagenet"),
        (["--teacher-weights", "/no/such/ckpt.pt"], "/no/such/ckpt.pt"),
        (["--ratio", "0.5"], "--ratio"),
        (["--set", "rwp_form=cubic"], "rwp_form"),
        (["--tasks", "seg", "--seg-root", "/no/such/ade"], "--seg-root /no/such/ade does not exist"),
        (["--tasks", "det", "--det-root", "/no/such/coco"], "--det-root /no/such/coco does not exist"),
        (["--tasks", "seg", "--methods", "tome"], "none of the methods tome applies to seg"),
        (["--tasks", "seg", "--methods", "pela", "--scale-batch"], "include 'dense'"),
        (["--tasks", "cls", "--methods", "dense,pela", "--scale-batch"], "add seg or det"),
    ],
)
def test_bad_input_is_one_line(args, needle, tmp_path):
    r = run_tool("run_suite.py", *args, "--out", str(tmp_path / "o"), "--results", str(tmp_path / "r"))
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and " INFO " not in ln]  # log lines aside
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
    assert not (tmp_path / "o").exists()  # failed before any work


def test_wrong_shape_teacher_checkpoint_is_one_line(tmp_path):
    import torch

    from backbones import create_backbone

    torch.save(create_backbone("deit_micro", num_classes=3).state_dict(), tmp_path / "t3.pt")
    data = tmp_path / "data"
    from tasks.synthetic import write_classification

    write_classification(data, n_train=16, n_val=16, progress=False)
    r = run_tool("run_suite.py", "--teacher-weights", str(tmp_path / "t3.pt"), "--data-root", str(data),
                 "--out", str(tmp_path / "o"), "--results", str(tmp_path / "r"), "--quiet")
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error")]
    assert r.returncode == 2 and len(lines) == 1 and "t3.pt" in lines[0] and "head.weight" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_list_and_make_tables(tmp_path):
    r = run_tool("run_suite.py", "--list")
    assert r.returncode == 0 and "deit_micro" in r.stdout and "pela" in r.stdout
    r = run_tool("make_tables.py", "--results", str(tmp_path))
    assert r.returncode == 0 and (tmp_path / "leaderboard.md").is_file()


def test_corrupt_training_image_is_named_in_one_line(tmp_path):
    from tasks.synthetic import write_classification

    data = write_classification(tmp_path / "data", n_train=64, n_val=16, progress=False)
    victim = sorted((data / "train").rglob("*.png"))[3]
    victim.write_bytes(b"truncated")
    r = run_tool("run_suite.py", "--data-root", str(data), "--methods", "dense", "--quiet",
                 "--out", str(tmp_path / "o"), "--results", str(tmp_path / "r"))
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error")]
    assert r.returncode == 2 and len(lines) == 1 and victim.name in lines[0], r.stderr[-1500:]
    assert "Traceback" not in r.stderr


def test_tiny_training_split_is_refused(tmp_path):
    from tasks.synthetic import write_classification

    data = write_classification(tmp_path / "data", n_train=16, n_val=16, progress=False)
    r = run_tool("run_suite.py", "--data-root", str(data), "--methods", "dense", "--quiet",
                 "--out", str(tmp_path / "o"), "--results", str(tmp_path / "r"))
    assert r.returncode == 2 and "fewer images than one batch" in r.stderr, r.stderr[-1500:]


def test_ratio_with_default_methods_runs_the_factorising_ones():
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_suite", ROOT / "tools" / "run_suite.py")
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        cfg, _ = mod.parse_args(["--ratio", "3"])
        assert "pela" in cfg.methods and "svd" in cfg.methods and "pc_lora" in cfg.methods
        assert not {"lora", "tome", "tinybert", "maskalign"} & set(cfg.methods)
        cfg, _ = mod.parse_args([])
        assert "lora" in cfg.methods and cfg.ratio is None
        # Tables 2/3's Swin: the dense-task defaults, narrowed to those that factorise.
        cfg, _ = mod.parse_args(["--backbone", "swin_base", "--tasks", "seg,det", "--ratio", "2",
                                 "--set", 'keep_full_rank=["head*","patch_embed*","norm","downsample*"]'])
        assert cfg.methods == ("dense", "svd", "pela", "pc_lora")
        assert cfg.method_options["keep_full_rank"] == ["head*", "patch_embed*", "norm", "downsample*"]
    finally:
        sys.path.remove(str(ROOT / "tools"))
