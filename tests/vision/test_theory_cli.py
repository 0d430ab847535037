"""``advsim vision theory ...`` end to end at a tiny size, on an image folder the test writes, plus bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes of 10x10 grey images (a bright square at a class-dependent place, plus noise)."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 8)):
        for c in range(3):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 60, (10, 10))
                img[1 + 3 * c: 4 + 3 * c, 2:7] += 180
                Image.fromarray(img.astype(np.uint8), mode="L").save(d / f"{i}.png")
    return root


def _run(args):
    res = CliRunner().invoke(main, args)
    return res.exit_code, res.output


def _tiny(folder, *sets):
    out = ["--dataset", "folder", "--root", str(folder), "--device", "cpu", "--threads", "1", "--quiet"]
    for s in sets:
        out += ["--set", s]
    return out


def test_teacher_student_cli(folder, tmp_path):
    out = tmp_path / "ts"
    code, text = _run(["vision", "theory", "teacher-student", "--out", str(out), *_tiny(
        folder, "synth_d=6", "synth_rank=2", "synth_teacher_hidden=2", "synth_student_hidden=4", "synth_n=60",
        "synth_steps=10", "synth_at_steps=1", "n_train=none", "n_test=12", "teacher_widths=3,3,3,3",
        "pruned_widths=2,2,2,2", "teacher_epochs=1", "teacher_finetune_epochs=1", "st_epochs=1,2", "at_epochs=1",
        "plane_epochs=1", "ccat_epochs=1", "ccat_rhos=5", "train_steps=1", "eval_steps=1", "eval_repeats=1",
        "batch_size=24", "pca_components=4", "figures=false")])
    assert code == 0, text
    assert "Claims of spec-001" in text and "Thm 1" in text
    metrics = json.loads((out / "metrics.json").read_text())
    t1 = metrics["images"]["table1"]
    assert set(t1) == {"AT(1)", "ST-logit(2)"} and set(t1["AT(1)"]) == {"linf-pgd", "l2-pgd", "l1-pgd", "fgsm",
                                                                        "cw", "transfer"}
    for v in t1["AT(1)"].values():
        assert 0.0 <= v["mean"] <= 100.0
    assert (out / "table2.md").is_file() and (out / "table4.md").is_file() and (out / "synthetic.md").is_file()
    assert json.loads((out / "config.json").read_text())["st_epochs"] == [1, 2]
    # a finished run is refused without --overwrite
    code, text = _run(["vision", "theory", "teacher-student", "--out", str(out), "--parts", "synthetic",
                       *_tiny(folder)])
    assert code == 1 and "already holds a finished run" in text


def test_regularisation_cli(folder, tmp_path):
    out = tmp_path / "reg"
    code, text = _run(["vision", "theory", "regularisation", "--out", str(out), "--at", "fgsm", *_tiny(
        folder, "n_train=none", "n_test=12", "nets=mlp", "mlp_width=8", "mlp_depth=3", "eps=0,0.1",
        "epochs=1", "eval_steps=1", "variation_eps=0.1", "lemma_pairs=2", "batch_size=24", "figures=false")])
    assert code == 0, text
    assert "Lemma 3.1" in text
    stats = json.loads((out / "statistics.json").read_text())["rows"]
    assert [(r["net"], r["AR (x/255)"]) for r in stats] == [("mlp", 0.0), ("mlp", 25.5)]
    lemma = json.loads((out / "lemma31.json").read_text())["rows"]
    assert all(r["max relative error"] < 1e-9 and r["interlacing holds"] for r in lemma)
    sv = json.loads((out / "singular_values.json").read_text())["rows"]
    assert [r["layer"] for r in sv[:3]] == ["net.layers.0", "net.layers.1", "net.layers.2"]


def test_properties_cli(folder, tmp_path):
    out = tmp_path / "props"
    code, text = _run(["vision", "theory", "properties", "--out", str(out), *_tiny(
        folder, "n_test=12", "l61_n_train=none", "l61_widths=8,8", "l61_linear_steps=20", "l61_steps=5",
        "l61_inits=default,lemma61", "hessian_iters=3", "nb_n_train=none", "nb_width=4", "nb_epochs=1",
        "nb_seeds=2", "rank_n_train=none", "rank_width=2", "rank_epochs=1", "rank_extra_epochs=1", "rank_every=1",
        "rank_attack_steps=1", "rank_eval_steps=1", "ntk_n_train=none", "ntk_images=2", "ntk_epochs=1",
        "ntk_mlp_widths=4,8", "ntk_conv_widths=2", "ntk_wrn_widths=", "batch_size=24", "figures=false")])
    assert code == 0, text
    rows = {r["init"]: r for r in json.loads((out / "lemma61.json").read_text())["rows"]}
    assert rows["lemma61"]["max |MLP - linear| at init"] < 1e-3 and rows["lemma61"]["min pre-activation at init"] >= 1
    assert {r["method"] for r in json.loads((out / "rank.json").read_text())["rows"]} == {
        "natural", "rankmin", "rankmax", "adversarial", "rankmin-adv", "rankmax-adv"}
    ntk = json.loads((out / "ntk.json").read_text())["rows"]
    assert [(r["net"], r["width"]) for r in ntk] == [("MLP-2", 4), ("MLP-4", 4), ("MLP-2", 8), ("MLP-4", 8),
                                                     ("ConvNet", 2)]
    assert all(-1.0 <= r["NTK correlation"] <= 1.0 for r in ntk)


@pytest.mark.parametrize("args,message", [
    (["teacher-student", "--parts", "bogus"], "parts must be synthetic and/or images"),
    (["properties", "--set", "nonsense=1"], "no such field"),
    (["properties", "--set", "nb_seeds=two"], "expected an integer"),
    (["regularisation", "--set", "eps=0.1"], "at least two increasing AR strengths"),
])
def test_bad_input_is_one_line(folder, tmp_path, args, message):
    code, text = _run(["vision", "theory", args[0], "--out", str(tmp_path / "bad"), *args[1:], *_tiny(folder)])
    assert code != 0 and message in text and "Traceback" not in text
    assert not (tmp_path / "bad" / "metrics.json").exists()


def test_fields_lists_the_config():
    code, text = _run(["vision", "theory", "properties", "--preset", "paper", "--fields"])
    assert code == 0 and "dataset = 'cifar10'" in text and "hessian_iters = 500" in text


def test_figure_writers(tmp_path):
    from vision.theory.plots import histograms, scatter_identity, xy_lines

    for path in (histograms(tmp_path / "h.png", {"a": [0.1, 0.5, 0.7], "b": [0.2, 0.3]}, bins=5),
                 scatter_identity(tmp_path / "s.png", [1.0, 2.0], [0.5, 2.5]),
                 xy_lines(tmp_path / "x.png", {"f": ([1, 2, 4], [0.1, 0.2, 0.3])}, logx=True)):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
