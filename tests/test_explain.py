"""Class activation maps (labkit.explain, explain.py) on generated data only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from labkit.engine.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from labkit.errors import ConfigError
from labkit.explain import class_map, explain_checkpoints, faithfulness, mass_in, upsample
from labkit.explain.methods import cam, resolve_layer
from labkit.explain.run import OwnRunFolder
from labkit.models import ConvPoolNet, FlexibleCNN

from .conftest import compose_config, run_cli

# -- data where the class is decided by a pattern in one known region ------------------------

SIZE, REGION, PATCH = 32, 16, 8  # 32x32 images; the class pattern lies in the top-left 16x16
MASS_THRESHOLD = 0.55            # share of a map's positive mass in that region (its area: 25 %)


def patterns() -> torch.Tensor:
    """Four 8x8 class patterns: horizontal and vertical stripes, a checkerboard, diagonals."""
    k = torch.arange(PATCH)
    stripes = ((k[:, None] // 2) % 2).float().expand(PATCH, PATCH)
    checker = ((k[:, None] // 2 + k[None, :] // 2) % 2).float()
    diagonal = (((k[:, None] + k[None, :]) // 2) % 2).float()
    return torch.stack([stripes, stripes.T, checker, diagonal]) * 2 - 1


def region_images(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise; the class pattern somewhere in the top-left quadrant; in one of the three other
    quadrants a bright square, the same for every class (so it tells nothing)."""
    classes = patterns()
    y = torch.randint(0, len(classes), (n,), generator=generator)
    x = 0.5 * torch.randn(n, 1, SIZE, SIZE, generator=generator)
    span = REGION - PATCH + 1
    for i in range(n):
        r, c = torch.randint(0, span, (2,), generator=generator).tolist()
        x[i, 0, r : r + PATCH, c : c + PATCH] += 1.5 * classes[y[i]]
        q = int(torch.randint(1, 4, (1,), generator=generator))
        r, c = (q // 2) * REGION + int(torch.randint(0, span, (1,), generator=generator)), \
            (q % 2) * REGION + int(torch.randint(0, span, (1,), generator=generator))
        x[i, 0, r : r + PATCH, c : c + PATCH] += 1.5
    return x, y


@pytest.fixture(scope="module")
def region_model():
    """A small ConvPoolNet (8x8 last feature map) trained for three epochs on 768 images."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x, y = region_images(768, generator)
    model = ConvPoolNet(in_channels=1, num_classes=4, widths=[8, 16], stem_width=8, activation="relu")
    optimizer = torch.optim.Adam(model.parameters(), 5e-3)
    for _ in range(3):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            idx = order[start : start + 64]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    test_x, test_y = region_images(32, generator)
    with torch.no_grad():
        accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
    assert accuracy >= 0.9, accuracy  # it learned the task, so its maps mean something
    return model, test_x, test_y


# -- methods -------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: FlexibleCNN(in_channels=3, num_classes=5, layers=[1, 1, 1, 1], width=4),
    lambda: ConvPoolNet(in_channels=1, num_classes=5, widths=[4, 8], stem_width=4),
])
def test_cam_equals_feature_map_times_head_weights(make):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(3, model.stem[0].in_channels, 16, 16)
    target = torch.tensor([0, 4, 2])
    maps = cam(model, x, target)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    direct = torch.zeros(3, *features.shape[-2:])
    for n in range(3):
        for k in range(features.shape[1]):
            direct[n] += model.head.weight[target[n], k] * features[n, k]
    torch.testing.assert_close(maps, direct, rtol=1e-5, atol=1e-5)
    # global average pooling + a linear head: the logit is CAM's mean plus the bias
    torch.testing.assert_close(maps.mean((1, 2)) + model.head.bias[target], logits[range(3), target],
                               rtol=1e-5, atol=1e-5)
    # Grad-CAM (captum) at the last block is ReLU(CAM) / (h * w) for such a head
    h, w = features.shape[-2:]
    torch.testing.assert_close(class_map(model, x, target, "gradcam"), maps.clamp_min(0) / (h * w),
                               rtol=1e-4, atol=1e-6)


def test_layer_names_and_cam_only_at_the_last_block():
    model = FlexibleCNN(in_channels=1, num_classes=3, layers=[1, 1, 1, 1], width=4).eval()
    assert resolve_layer(model, "last")[0] == "blocks.3"
    assert resolve_layer(model, "-2")[0] == resolve_layer(model, "blocks.2")[0] == "blocks.2"
    assert resolve_layer(model, "stem")[0] == "stem"
    with pytest.raises(ConfigError, match="explain.layer='blocks.9'"):
        resolve_layer(model, "blocks.9")
    x, target = torch.randn(2, 1, 16, 16), torch.tensor([0, 1])
    assert class_map(model, x, target, "gradcam", "blocks.1").shape == (2, 8, 8)
    with pytest.raises(ConfigError, match="only at the last block"):
        class_map(model, x, target, "cam", "blocks.1")


@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_maps_find_the_region_and_beat_a_random_map(region_model, method):
    model, x, y = region_model
    maps = class_map(model, x, y, method)
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[:REGION, :REGION] = True
    mass = mass_in(upsample(maps, (SIZE, SIZE)), mask)
    assert mass.mean() >= MASS_THRESHOLD, mass
    score = faithfulness(model, x, maps, y, steps=10)
    assert score["beats_random"]
    assert score["map"]["score"] > score["random"]["score"] + 0.1, score
    assert score["map"]["deletion_auc"] < score["random"]["deletion_auc"]
    assert score["map"]["insertion_auc"] > score["random"]["insertion_auc"]


# -- the command ---------------------------------------------------------------------------

SYNTHETIC = ["data=synthetic", "data.n_train=64", "data.n_test=48", "data.val_size=8", "data.image_size=16"]


def write_checkpoint(path: Path, overrides: list[str], config_name: str = "train", role: str = "model",
                     prefix: str = "", **extra) -> Path:
    """A labkit checkpoint of a freshly built (untrained) model with its resolved config."""
    cfg = compose_config([*overrides, "logger=none"], path.parent.parent, config_name=config_name)
    torch.manual_seed(0)
    model = instantiate(cfg[role])
    save_checkpoint({"format": CHECKPOINT_FORMAT, "epoch": 1,
                     "config": OmegaConf.to_container(cfg, resolve=True),
                     "model": {prefix + k: v for k, v in model.state_dict().items()}, **extra}, path)
    return path


def explain_config(ckpt_path, out: Path, *overrides: str):
    ckpt = f"[{','.join(map(str, ckpt_path))}]" if isinstance(ckpt_path, list) else str(ckpt_path)
    return compose_config([f"ckpt_path={ckpt}", *overrides], out, config_name="explain")


def test_grid_on_colour_images_from_a_compiled_ddp_state_dict(tmp_path):
    run = tmp_path / "train_run"
    write_checkpoint(run / "checkpoints" / "best.pt", ["model=convpool", "model.widths=[4,8]",
                     "model.stem_width=4", *SYNTHETIC, "data.in_channels=3"], prefix="module._orig_mod.")
    before = sorted(p.name for p in run.rglob("*"))
    out = tmp_path / "explain"
    # a run folder stands for its checkpoints/best.pt
    summary = explain_checkpoints(explain_config(run, out, "explain.per_class=2", "explain.steps=4"))
    assert {"grid.png", "faithfulness.png", "maps.pt", "explain.json"} <= {p.name for p in out.iterdir()}
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing written into the run
    saved = json.loads((out / "explain.json").read_text())
    assert saved["method"] == "gradcam" and saved["mode"] == "grid" and saved["images"] <= 40
    faith = saved["runs"][0]["faithfulness"]
    assert {"deletion_auc", "insertion_auc", "score"} <= set(faith["map"]) == set(faith["random"])
    assert summary["runs"][0]["layer"] == "blocks.1" and summary["runs"][0]["map_size"] == [4, 4]
    maps = torch.load(out / "maps.pt", weights_only=True)
    record = maps["runs"]["train_run"]
    assert record["maps"].shape == (saved["images"], 4, 4) and len(maps["test_indices"]) == saved["images"]
    assert record["map_deletion_auc"].shape == (saved["images"],)


def test_distillation_run_side_by_side(tmp_path):
    run = tmp_path / "distill_run"
    roles = ["model@teacher=convpool", "teacher.widths=[4,8]", "teacher.stem_width=4", "model@student=cnn",
             "student.layers=[1,1,1,1]", "student.width=4", *SYNTHETIC]
    # the students have engine checkpoints (with the config); the teacher only its stage file
    config = write_checkpoint(run / "student_baseline" / "checkpoints" / "last.pt", roles, "distill",
                              role="student", stage="student_baseline")
    state = torch.load(config, weights_only=True)
    cfg = OmegaConf.create(state["config"])
    for stage, role in (("teacher", "teacher"), ("student_baseline", "student"),
                        ("student_distill", "student")):
        weights = instantiate(cfg[role]).state_dict()
        save_checkpoint({"format": "labkit-distill-stage-v1", "model": weights}, run / f"{stage}.pth")
    out = tmp_path / "explain"
    summary = explain_checkpoints(explain_config(run, out, "explain.per_class=1", "explain.steps=4",
                                                 "explain.method=cam"))
    assert [r["label"] for r in summary["runs"]] == ["teacher", "student_baseline", "student_distill"]
    assert [r["model"] for r in summary["runs"]] == ["ConvPoolNet", "FlexibleCNN", "FlexibleCNN"]
    assert (out / "comparison.png").is_file() and not (out / "grid.png").exists()
    assert len(summary["agreement"]) == 3 and 10 < summary["images"] <= 2 * 10  # 2 x per_class per class
    maps = torch.load(out / "maps.pt", weights_only=True)
    assert len(maps["test_indices"]) == summary["images"]
    assert set(maps["runs"]) == {"teacher", "student_baseline", "student_distill"}


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    mlp = write_checkpoint(root / "mlp" / "checkpoints" / "best.pt", ["model=mlp", *SYNTHETIC,
                                                                      "data.in_channels=1"])
    cnn = write_checkpoint(root / "cnn" / "checkpoints" / "best.pt",
                           ["model=convpool", "model.widths=[4,8]", "model.stem_width=4", *SYNTHETIC,
                            "data.in_channels=1"])
    return root, mlp, cnn


@pytest.mark.slow
@pytest.mark.parametrize("case,args,message", [
    ("mlp", [], "FlexibleMLP, which has no convolutions"),
    ("cnn", ["explain.layer=blocks.7"], "explain.layer='blocks.7' is invalid"),
    ("cnn", ["explain.method=lime"], "explain.method='lime' is invalid"),
    ("missing", [], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(bad_inputs, tmp_path, case, args, message):
    root, mlp, cnn = bad_inputs
    ckpt = {"mlp": mlp, "cnn": cnn, "missing": root / "nowhere.pt"}[case]
    result = run_cli("explain.py", f"ckpt_path={ckpt}", f"paths.log_dir={tmp_path}", *args, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    if case == "missing":  # found by the Hydra callback, before the output folder is made
        assert not (tmp_path / "explain").exists()


def test_output_inside_the_checkpoints_run_is_refused(bad_inputs, capsys):
    """Refused by the Hydra callback before Hydra creates the folder, and by the task itself."""
    _, _, cnn = bad_inputs
    inside = cnn.parent.parent / "explain"
    hydra_cfg = OmegaConf.create({"ckpt_path": str(cnn), "hydra": {"run": {"dir": str(inside)}}})
    with pytest.raises(SystemExit) as exit_info:
        OwnRunFolder().on_run_start(hydra_cfg)
    assert exit_info.value.code == 2 and "is inside the run of" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="is inside the run of"):
        explain_checkpoints(explain_config(cnn, inside))
    assert not inside.exists()


# -- image folders: sorted by class, and moved after training ------------------------------------
def write_sorted_folder(root: Path, classes: int = 10, per_class: int = 6, size: int = 8) -> Path:
    """train/ and test/ with ``classes`` class folders of random colour images: an image folder's
    test set is read sorted by class."""
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (size, size, 3), generator=rng, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A CNN checkpoint of a ``data=cifar10_jpeg`` run (untrained) whose folder moved afterwards."""
    root = tmp_path_factory.mktemp("folder")
    old = write_sorted_folder(root / "old_root" / "CIFAR-10-JPEG")
    ckpt = write_checkpoint(root / "run" / "checkpoints" / "best.pt", [
        "model=convpool", "model.widths=[4,8]", "model.stem_width=4", "data=cifar10_jpeg",
        f"data.root={old.parent}", "data.cache_dir=null", "data.image_size=8", "data.val_size=10"])
    moved = root / "new_root" / "CIFAR-10-JPEG"
    moved.parent.mkdir()
    old.rename(moved)
    return ckpt, moved


def test_explain_fills_every_class_row_of_a_sorted_moved_image_folder(folder_run, tmp_path):
    ckpt, moved = folder_run
    out = tmp_path / "explain"
    # the first 20 test images are classes 0 and 1 only: the pool is drawn across the test set
    summary = explain_checkpoints(explain_config(ckpt, out, f"data.path={moved}", "explain.pool=20",
                                                 "explain.per_class=1", "explain.steps=4"))
    maps = torch.load(out / "maps.pt", weights_only=True)
    assert sorted(set(maps["targets"].tolist())) == list(range(10))  # every class row filled
    assert summary["pool"] == 20 and len(set(summary["test_indices"])) == summary["images"]
    labels = torch.arange(10).repeat_interleave(6)  # the test set's labels, sorted by class
    assert labels[maps["test_indices"]].tolist() == maps["targets"].tolist()
    again = explain_checkpoints(explain_config(ckpt, tmp_path / "again", f"data.path={moved}",
                                               "explain.pool=20", "explain.per_class=1", "explain.steps=4"))
    assert again["test_indices"] == summary["test_indices"]  # seeded
    streamed = explain_checkpoints(explain_config(ckpt, tmp_path / "stream", f"data.path={moved}",
                                                  "data.storage=stream", "explain.pool=20",
                                                  "explain.per_class=1", "explain.steps=4"))
    assert streamed["test_indices"] == summary["test_indices"]  # the same files, decoded on demand
    streamed_maps = torch.load(tmp_path / "stream" / "maps.pt", weights_only=True)["runs"]
    assert all(torch.allclose(streamed_maps[label]["maps"], run["maps"])
               for label, run in maps["runs"].items())


def test_eval_reads_a_moved_image_folder_by_path_or_root(folder_run, tmp_path):
    from labkit.evaluation import evaluate_checkpoint

    ckpt, moved = folder_run
    results = {}
    for name, *overrides in (("path", f"data.path={moved}"), ("root", f"data.root={moved.parent}"),
                             ("stream", f"data.path={moved}", "data.storage=stream"),
                             ("tta", f"data.path={moved}", "trainer.eval_flip=true",
                              "trainer.eval_translate=1")):
        cfg = compose_config([f"ckpt_path={ckpt}", *overrides], tmp_path / name, config_name="eval")
        results[name] = evaluate_checkpoint(cfg)
        assert sum(sum(row) for row in results[name]["confusion_matrix"]) == 60
    assert results["stream"]["test_loss"] == pytest.approx(results["path"]["test_loss"], rel=1e-5)
    assert results["path"]["eval_translate"] == 0 and results["tta"]["eval_translate"] == 1
    assert results["tta"]["eval_flip"] and results["tta"]["test_loss"] != results["path"]["test_loss"]


def test_data_path_on_a_run_without_a_folder_is_one_clear_error(bad_inputs, tmp_path):
    _, _, cnn = bad_inputs
    with pytest.raises(ConfigError, match="data.path=/x is for image-folder runs"):
        explain_checkpoints(explain_config(cnn, tmp_path / "out", "data.path=/x"))
