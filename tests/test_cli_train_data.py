"""``minitofe train --data DIR``: an ImageNet-layout image folder (DIR/train, DIR/val) instead of
Fashion-MNIST, read through Pillow."""
import json

import numpy as np
from PIL import Image

import minitofe
from minitofe.cli import main
from minitofe.config import ViTConfig

CFG = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=4, num_heads=2)


def _folder(root, classes=("cat", "dog"), per_class=4, size=12):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def _weights(tmp_path):
    path = tmp_path / "backbone.npz"
    minitofe.save_model(path, minitofe.new_model(CFG, minitofe.ToFeConfig(method="dense"),
                                                 np.random.default_rng(1), np.float32))
    return path


def test_train_on_an_image_folder_with_train_and_val(tmp_path, capsys):
    data, out = _folder(tmp_path / "data"), tmp_path / "run"
    code = main(["train", "--init", str(_weights(tmp_path)), "--data", str(data), "--steps", "2", "--batch",
                 "4", "--eval-every", "2", "--eval-images", "8", "--warmup-steps", "1", "--out", str(out),
                 "--no-progress", "--target", "0.7"])
    assert code == 0, capsys.readouterr().err
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "eval" not in r] == [0, 1]
    evals = [r["eval"] for r in lines if "eval" in r]
    assert len(evals) == 1 and evals[0]["n"] == 8                  # the val split: 2 classes x 4 images
    assert minitofe.load_model(out / "final.npz").tofe.method == "tofe"


def test_train_data_errors_name_the_folder(tmp_path, capsys):
    weights = _weights(tmp_path)
    missing = tmp_path / "nope"
    assert main(["train", "--init", str(weights), "--data", str(missing), "--out", str(tmp_path / "r")]) == 2
    assert str(missing) in capsys.readouterr().err
    many = _folder(tmp_path / "many", classes=("a", "b", "c", "d"), per_class=1)
    assert main(["train", "--init", str(weights), "--data", str(many), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "4 class folders" in err and "3 classes" in err


def test_a_folder_without_train_is_the_training_set(tmp_path, capsys):
    data = _folder(tmp_path / "d")
    out = tmp_path / "run"
    code = main(["train", "--init", str(_weights(tmp_path)), "--data", str(data / "train"), "--steps", "1",
                 "--batch", "8", "--warmup-steps", "1", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert not any("eval" in json.loads(line) for line in (out / "log.jsonl").read_text().splitlines())


def test_train_passes_the_stages_approximator_width_and_tau_schedule_on(tmp_path, capsys):
    """--stages, --approx-reduction, --tau, --tau-end reach the model's ToFeConfig, its parameters and the steps."""
    data, out = _folder(tmp_path / "data"), tmp_path / "run"
    code = main(["train", "--init", str(_weights(tmp_path)), "--data", str(data), "--steps", "3", "--batch",
                 "4", "--eval-every", "3", "--eval-images", "8", "--warmup-steps", "1", "--out", str(out),
                 "--no-progress", "--approx-reduction", "2", "--tau", "2", "--tau-end", "0.5", "--stages", "1", "3",
                 "--keep-ratios", "0.5", "0.5", "--method", "tofe-uniform"])
    assert code == 0, capsys.readouterr().err
    model = minitofe.load_model(out / "final.npz")
    assert (model.tofe.approx_reduction, model.tofe.tau, model.tofe.tau_end) == (2, 2.0, 0.5)
    assert model.tofe.stages == (1, 3) and "tofe.approx.2.fc1.weight" not in model.params
    assert model.params["tofe.approx.0.fc1.weight"].shape == (CFG.embed_dim // 2, CFG.embed_dim)
    taus = [json.loads(line)["tau"] for line in (out / "log.jsonl").read_text().splitlines()
            if "tau" in json.loads(line)]
    assert taus[0] == 2.0 and taus[-1] < taus[0] and taus[-1] >= 0.5


def test_stages_of_another_count_need_their_keep_ratios(tmp_path, capsys):
    data = _folder(tmp_path / "data")
    code = main(["train", "--init", str(_weights(tmp_path)), "--data", str(data), "--steps", "1", "--out",
                 str(tmp_path / "run"), "--no-progress", "--stages", "1", "3"])
    assert code == 2 and "--stages 1 3 makes 2 stages: give as many --keep-ratios" in capsys.readouterr().err
