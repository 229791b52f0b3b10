"""The distillation methods: each loss against a second, float64 implementation written here
from the paper's formula (loops over samples, pairs and triplets, not the library's vectorised
code), gradients (to the student, never to the teacher), shape mismatches, and the errors of a
method that cannot apply."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

import labkit.distill.pipeline as pipeline
from labkit.distill.criterion import DistillationCriterion
from labkit.distill.methods import METHODS, Outputs, build_methods, ce_weight, method_names
from labkit.distill.methods.at import at_loss
from labkit.distill.methods.dist import dist_loss
from labkit.distill.methods.dkd import DKD, dkd_loss
from labkit.distill.methods.fitnet import Connector, fitnet_loss
from labkit.distill.methods.kd import kd_soft_loss
from labkit.distill.methods.rkd import rkd_loss
from labkit.distill.teacher import teacher_outputs
from labkit.errors import ConfigError
from labkit.models import ConvPoolNet, FlexibleCNN, FlexibleMLP
from labkit.report.distill import methods_table

from .conftest import compose_config, run_cli


def rand(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- float64 references, from the papers ------------------------------------------------------
def softmax64(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def kl64(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def ref_dkd(s, t, y, alpha, beta, T):
    """Zhao et al. 2022, eq. (1)-(4): b = [p_t, 1 - p_t]; p^ = p over the non-target classes,
    renormalised; DKD = alpha * KL(b^T || b^S) + beta * KL(p^T || p^S), times T^2 (their code)."""
    total = 0.0
    for zs, zt, target in zip(s.double().tolist(), t.double().tolist(), y.tolist(), strict=True):
        ps, pt = softmax64([v / T for v in zs]), softmax64([v / T for v in zt])
        bs, bt = [ps[target], 1 - ps[target]], [pt[target], 1 - pt[target]]
        rest_s = [p / (1 - ps[target]) for c, p in enumerate(ps) if c != target]
        rest_t = [p / (1 - pt[target]) for c, p in enumerate(pt) if c != target]
        total += alpha * kl64(bt, bs) + beta * kl64(rest_t, rest_s)
    return T**2 * total / len(y)


def pearson64(u, v):
    mu, mv = sum(u) / len(u), sum(v) / len(v)
    cov = sum((a - mu) * (b - mv) for a, b in zip(u, v, strict=True))
    return cov / math.sqrt(sum((a - mu) ** 2 for a in u) * sum((b - mv) ** 2 for b in v))


def ref_dist(s, t, beta, gamma, T):
    """Huang et al. 2022, eq. (6)-(10): d_p = 1 - Pearson; inter-class over each sample's row,
    intra-class over each class's column, both scaled by T^2."""
    ys = [softmax64([v / T for v in row]) for row in s.double().tolist()]
    yt = [softmax64([v / T for v in row]) for row in t.double().tolist()]
    inter = sum(1 - pearson64(a, b) for a, b in zip(ys, yt, strict=True)) / len(ys)
    cols_s, cols_t = list(zip(*ys, strict=True)), list(zip(*yt, strict=True))
    intra = sum(1 - pearson64(a, b) for a, b in zip(cols_s, cols_t, strict=True)) / len(cols_s)
    return T**2 * (beta * inter + gamma * intra)


def huber64(x):
    return 0.5 * x * x if abs(x) <= 1 else abs(x) - 0.5


def ref_rkd(s, t, wd, wa):
    """Park et al. 2019, eq. (4)-(7): distances over pairs i != j normalised by their mean, cosines
    of the angle at e_j over distinct triplets, Huber (delta 1) between teacher and student; the
    sums divided by n^2 and n^3 as the reference code's means over whole matrices do (the other
    entries are equal for both models)."""
    s, t = s.double().reshape(len(s), -1).tolist(), t.double().reshape(len(t), -1).tolist()
    n = len(s)

    def dist(e, i, j):
        return math.sqrt(sum((a - b) ** 2 for a, b in zip(e[i], e[j], strict=True)))

    def cos(e, i, j, k):
        u = [a - b for a, b in zip(e[i], e[j], strict=True)]
        v = [a - b for a, b in zip(e[k], e[j], strict=True)]
        return sum(a * b for a, b in zip(u, v, strict=True)) / math.sqrt(
            sum(a * a for a in u) * sum(b * b for b in v))

    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    mu_s = sum(dist(s, i, j) for i, j in pairs) / len(pairs)
    mu_t = sum(dist(t, i, j) for i, j in pairs) / len(pairs)
    distance = sum(huber64(dist(s, i, j) / mu_s - dist(t, i, j) / mu_t) for i, j in pairs) / n**2
    triplets = list(itertools.permutations(range(n), 3))
    angle = sum(huber64(cos(s, i, j, k) - cos(t, i, j, k)) for i, j, k in triplets) / n**3
    return wd * distance + wa * angle


def ref_attention(a, size):
    """Zagoruyko & Komodakis 2017: the features average-pooled to ``size`` in equal blocks
    (before squaring, as the reference code pools), then F(A) = mean_c A_c^2 (p = 2), vectorised
    and divided by its L2 norm; one sample ``a`` = [C, H, W]."""
    c, h, w = a.shape
    bh, bw = h // size[0], w // size[1]
    pooled = [[[sum(float(a[k, i * bh + di, j * bw + dj]) for di in range(bh) for dj in range(bw)) / (bh * bw)
                for j in range(size[1])] for i in range(size[0])] for k in range(c)]
    energy = [sum(pooled[k][i][j] ** 2 for k in range(c)) / c for i in range(size[0]) for j in range(size[1])]
    norm = math.sqrt(sum(v * v for v in energy))
    return [v / norm for v in energy]


def ref_at(student_maps, teacher_maps):
    """sum_j mean over samples and positions of (Q_s - Q_t)^2, without beta (and no 1/2)."""
    total = 0.0
    for s, t in zip(student_maps, teacher_maps, strict=True):
        size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
        sq = [(a - b) ** 2 for n in range(s.shape[0])
              for a, b in zip(ref_attention(s[n].double(), size), ref_attention(t[n].double(), size),
                              strict=True)]
        total += sum(sq) / len(sq)
    return total


# -- each loss against its reference --------------------------------------------------------------
@pytest.mark.parametrize("T,alpha,beta", [(1.0, 1.0, 8.0), (4.0, 1.0, 8.0), (2.0, 0.5, 2.0)])
def test_dkd_matches_the_paper(T, alpha, beta):
    s, t, y = rand(6, 5, seed=1, scale=3), rand(6, 5, seed=2, scale=3), torch.tensor([0, 1, 2, 3, 4, 0])
    got = dkd_loss(s, t, y, alpha, beta, T)
    assert got.item() == pytest.approx(ref_dkd(s, t, y, alpha, beta, T), rel=1e-5, abs=1e-6)


def test_kd_is_tckd_plus_weighted_nckd():
    """The paper's identity KD = TCKD + (1 - p_t^T) NCKD, per sample, checks both terms apart."""
    s, t, y = rand(1, 7, seed=3, scale=2), rand(1, 7, seed=4, scale=2), torch.tensor([2])
    p_t = torch.softmax(t / 4.0, 1)[0, 2].item()
    tckd = dkd_loss(s, t, y, 1.0, 0.0, 4.0).item()
    nckd = dkd_loss(s, t, y, 0.0, 1.0, 4.0).item()
    assert kd_soft_loss(s, t, 4.0).item() == pytest.approx(tckd + (1 - p_t) * nckd, rel=1e-5)


@pytest.mark.parametrize("T,beta,gamma", [(1.0, 1.0, 1.0), (4.0, 1.0, 1.0), (4.0, 2.0, 0.5)])
def test_dist_matches_the_paper(T, beta, gamma):
    s, t = rand(8, 6, seed=5, scale=3), rand(8, 6, seed=6, scale=3)
    got = dist_loss(s, t, beta, gamma, T)
    assert got.item() == pytest.approx(ref_dist(s, t, beta, gamma, T), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("wd,wa", [(25.0, 50.0), (1.0, 0.0), (0.0, 2.0)])
def test_rkd_matches_the_paper(wd, wa):
    s, t = rand(6, 4, seed=7), rand(6, 3, 2, seed=8)  # any widths; maps are flattened
    got = rkd_loss(s, t, wd, wa)
    assert got.item() == pytest.approx(ref_rkd(s, t, wd, wa), rel=1e-4, abs=1e-6)


def test_at_matches_the_paper_with_pooling_and_other_widths():
    student = [rand(3, 4, 8, 8, seed=9), rand(3, 6, 4, 4, seed=10)]
    teacher = [rand(3, 16, 4, 4, seed=11), rand(3, 12, 4, 4, seed=12)]  # first pair: 8x8 vs 4x4
    got = at_loss(student, teacher)
    assert got.item() == pytest.approx(ref_at(student, teacher), rel=1e-4, abs=1e-8)


def test_fitnet_is_the_mean_squared_hint_error():
    projected, hint = rand(2, 3, 4, 4, seed=13), rand(2, 3, 4, 4, seed=14)
    ref = sum((a - b) ** 2 for a, b in zip(projected.double().flatten().tolist(),
                                           hint.double().flatten().tolist(), strict=True)) / projected.numel()
    assert fitnet_loss(projected, hint).item() == pytest.approx(ref, rel=1e-5)


def test_identical_outputs_cost_nothing():
    z, y = rand(5, 4, seed=15), torch.tensor([0, 1, 2, 3, 0])
    maps = [rand(5, 3, 4, 4, seed=16)]
    assert dkd_loss(z, z, y, 1.0, 8.0, 4.0).item() == pytest.approx(0.0, abs=1e-5)
    assert dist_loss(z, z, 1.0, 1.0, 4.0).item() == pytest.approx(0.0, abs=2e-4)  # T^2 x fp32 rounding
    assert rkd_loss(z, 3 * z, 25.0, 50.0).item() == pytest.approx(0.0, abs=1e-5)  # scale-free
    assert at_loss(maps, [2 * m for m in maps]).item() == pytest.approx(0.0, abs=1e-7)


# -- gradients: to the student (and connectors), never to the teacher -----------------------------
SHAPES_T = {"stage1": (16, 8, 8), "stage2": (32, 4, 4), "pre_logits": (32,)}
SHAPES_S = {"stage1": (4, 8, 8), "stage2": (8, 2, 2), "pre_logits": (8,)}
DISTILL = {"kd": {"temperature": 4.0, "alpha": 0.5}, "fitnet": {"weight": 100.0, "feature_layers": None},
           "at": {"weight": 1000.0, "feature_layers": None},
           "rkd": {"distance_weight": 25.0, "angle_weight": 50.0, "feature_layers": None},
           "dkd": {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 0.0},
           "dist": {"beta": 1.0, "gamma": 1.0, "temperature": 4.0}, "ce_weight": "auto",
           "feature_layers": None}


def outputs(shapes, seed, grad):
    logits = rand(6, 10, seed=seed, scale=2).requires_grad_(grad)
    feats = {k: rand(6, *v, seed=seed + i + 1).requires_grad_(grad)
             for i, (k, v) in enumerate(shapes.items())}
    return Outputs(logits, feats)


@pytest.mark.parametrize("name", list(METHODS))
def test_gradient_reaches_the_student_and_not_the_teacher(name):
    method = build_methods({**DISTILL, "method": name}, SHAPES_T, SHAPES_S)[0]
    student, teacher = outputs(SHAPES_S, 20, True), outputs(SHAPES_T, 40, True)
    loss = method(student, teacher, torch.tensor([0, 1, 2, 3, 4, 5]))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    used = [student.logits] if not method.pairs else [student.features[s] for _, s in method.pairs]
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in used)
    assert teacher.logits.grad is None and all(t.grad is None for t in teacher.features.values())
    for param in method.parameters():  # FitNet's connectors train with the student
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_method_defaults_pair_the_papers_points():
    methods = build_methods({**DISTILL, "method": "fitnet+at+rkd"}, SHAPES_T, SHAPES_S)
    assert [m.pairs for m in methods] == [[("stage1", "stage1")],
                                          [("stage1", "stage1"), ("stage2", "stage2")],
                                          [("pre_logits", "pre_logits")]]
    chosen = build_methods({**DISTILL, "method": "at", "feature_layers": ["stage2:stage1"]},
                           SHAPES_T, SHAPES_S)
    assert chosen[0].pairs == [("stage2", "stage1")]


# -- shape mismatches, as the papers handle them -------------------------------------------------------
@pytest.mark.parametrize("student,teacher,conv", [
    ((4, 8, 8), (16, 4, 4), (torch.nn.Conv2d, (3, 3), (2, 2))),            # student 2x: 3x3 stride 2
    ((4, 4, 4), (16, 8, 8), (torch.nn.ConvTranspose2d, (4, 4), (2, 2))),   # student half: transposed
    ((4, 6, 6), (16, 4, 4), (torch.nn.Conv2d, (3, 3), (1, 1))),            # larger: kernel 1 + h_s - h_t
    ((4, 4, 4), (16, 4, 4), (torch.nn.Conv2d, (1, 1), (1, 1))),
    ((4, 2, 2), (16, 8, 8), (torch.nn.Conv2d, (1, 1), (1, 1))),            # 4x smaller: 1x1 + upsampling
    ((12,), (40,), (torch.nn.Linear, None, None))])
def test_connector_maps_the_student_shape_onto_the_teachers(student, teacher, conv):
    """The references' ConvReg (RepDistiller models/util.py:131-154): conv -> BN -> ReLU."""
    connector = Connector(student, teacher)
    out = connector(rand(2, *student, seed=21))
    assert tuple(out.shape[1:]) == teacher
    assert (out >= 0).all() and (out > 0).any()  # post-ReLU, as the teacher's stage outputs
    first = connector.proj[0]
    assert type(first) is conv[0] and isinstance(connector.proj[-1], torch.nn.ReLU)
    if conv[1] is not None:
        assert (first.kernel_size, first.stride) == (conv[1], conv[2])
    plain = Connector(student, teacher, relu=False)
    assert not any(isinstance(m, torch.nn.ReLU) for m in plain.modules())


def test_connector_params_train_with_the_student_but_are_not_deployed(data_root, tmp_path):
    """A FitNet run on MLPs: the connector is in training_params, not in the deployed params or
    the stage file, and the deployed student has the baseline's parameter count."""
    summary = pipeline.distill(compose_config(
        [*tiny(data_root, tmp_path), "distill.method=fitnet+kd", "distill.feature_layers=[block1]"],
        tmp_path / "run", config_name="distill"))
    job = json.loads((tmp_path / "run" / "student_distill" / "summary.json").read_text())
    assert job["connector_params"] == 8 * 48 + 48  # Linear(8 -> 48)
    assert job["training_params"] == job["params"] + job["connector_params"]
    assert summary["student_distill_params"] == summary["student_baseline_params"] == job["params"]
    assert summary["method"] == "fitnet+kd" and job["ce_weight"] == 0.5
    assert summary["method_label"].startswith("fitnet (weight=100, block1) + kd (T=4, alpha=0.5)")
    weights = torch.load(tmp_path / "run" / "student_distill.pth", weights_only=True)["model"]
    assert not any("connector" in key for key in weights)
    assert "fitnet (weight=100, block1) + kd" in (tmp_path / "run" / "comparison.md").read_text()


# -- a method that cannot apply: one line, exit 2 ------------------------------------------------
def tiny(data_root, log_dir):
    return [f"data.root={data_root}", "data.val_size=100", "data.train_size=256", "data.batch_size=64",
            "trainer.epochs=1",
            "teacher.width=48", "student.width=8", f"paths.log_dir={log_dir}", "logger=none",
            "trainer.device=cpu"]


def test_attention_transfer_on_an_mlp_is_one_line_and_exit_2(data_root, tmp_path):
    result = run_cli("distill.py", "distill.method=at", *tiny(data_root, tmp_path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: distill.method=at cannot apply: the teacher's block1 is a vector [48], "
        "not a feature map [C, H, W]; attention transfer needs spatial maps (use a CNN, or fitnet / rkd)"]
    assert not list(tmp_path.rglob("teacher.pth"))  # refused before any training


def test_other_mismatches_are_config_errors():
    mlp = {"block1": (48,), "pre_logits": (48,)}
    with pytest.raises(ConfigError, match="fitnet cannot pair teacher stage1 .* both must be feature maps"):
        build_methods({**DISTILL, "method": "fitnet", "feature_layers": ["stage1:block1"]},
                      SHAPES_T, mlp, student_name="the student")
    with pytest.raises(ConfigError, match="no feature point 'stage9'; it declares stage1, stage2, pre_"):
        build_methods({**DISTILL, "method": "at", "feature_layers": ["stage9"]}, SHAPES_T, SHAPES_S)
    with pytest.raises(ConfigError, match="declares no feature points"):
        build_methods({**DISTILL, "method": "rkd"}, {}, SHAPES_S)
    with pytest.raises(ConfigError, match="distill.method='crd' is invalid"):
        method_names("crd")
    with pytest.raises(ConfigError, match="distill.method='kd\\+kd' is invalid"):
        method_names("kd+kd")
    with pytest.raises(ConfigError, match="distill.dkd.beta=-1 is invalid"):
        build_methods({**DISTILL, "method": "dkd", "dkd": {**DISTILL["dkd"], "beta": -1}})
    with pytest.raises(ConfigError, match="feature method"):
        teacher_outputs(FlexibleMLP(), None, True, points=["block1"])


def test_ce_weight_follows_the_kd_convention():
    assert ce_weight({**DISTILL, "method": "kd"}) == 0.5
    assert ce_weight({**DISTILL, "method": "kd+at"}) == 0.5
    assert ce_weight({**DISTILL, "method": "dkd"}) == 1.0
    assert ce_weight({**DISTILL, "method": "at", "ce_weight": 0.3}) == 0.3


# -- the models' declared feature points -----------------------------------------------------------
@pytest.mark.parametrize("model,stages", [
    (FlexibleCNN(1, 10, layers=[1, 2, 1, 1], width=4, stem_stride=2), [(4, 14, 14), (8, 7, 7), (16, 4, 4),
                                                                        (32, 2, 2)]),
    (ConvPoolNet(1, 10, widths=[4, 8, 8], stem_width=4), [(4, 14, 14), (8, 7, 7), (8, 3, 3)]),
    (FlexibleMLP((1, 28, 28), 10, depth=3, width=16), [(16,), (16,), (16,)]),
])
def test_models_declare_their_feature_points(model, stages):
    model.eval()
    x = rand(2, 1, 28, 28, seed=30)
    names = model.feature_points()
    logits, features = model.forward_with_features(x, names)
    torch.testing.assert_close(logits, model(x))  # the same pass, the same logits
    stage_names = [n for n in names if n.startswith(("stage", "block"))]
    assert [tuple(features[n].shape[1:]) for n in stage_names] == stages
    assert features["pre_logits"].shape == (2, stages[-1][0])


def test_dkd_warms_up_linearly_and_its_position_survives_a_checkpoint():
    dkd = DKD(warmup=0.5)
    dkd.set_total_steps(8)  # full weight from step 4
    s, t, y = outputs({}, 50, False), outputs({}, 60, False), torch.arange(6)
    full = dkd_loss(s.logits, t.logits, y, 1.0, 8.0, 4.0).item()
    got = [dkd(s, t, y).item() for _ in range(3)]
    assert got == pytest.approx([full / 4, full / 2, 3 * full / 4], rel=1e-5)
    # the engine's checkpoint holds the criterion's state: a resumed run continues the ramp
    state = DistillationCriterion(lambda batch: t, [dkd], 1.0).state_dict()
    assert state == {"dkd": {"steps_done": 3}}
    resumed = DKD(warmup=0.5)
    resumed.set_total_steps(8)
    DistillationCriterion(lambda batch: t, [resumed], 1.0).load_state_dict(state)
    assert [resumed(s, t, y).item() for _ in range(2)] == pytest.approx([full, full], rel=1e-5)


def test_feature_method_run_uses_the_live_teacher_on_a_cnn(data_root, tmp_path):
    summary = pipeline.distill(compose_config(
        [*tiny(data_root, tmp_path), "model@teacher=cnn", "model@student=cnn", "teacher.width=8",
         "student.width=4", "teacher.layers=[1,1,1,1]", "student.layers=[1,1,1,1]", "teacher.stem_stride=2",
         "student.stem_stride=2", "distill.method=kd+at"],
        tmp_path / "run", config_name="distill"))
    job = json.loads((tmp_path / "run" / "student_distill" / "summary.json").read_text())
    assert job["teacher_outputs"] == "live" and job["connector_params"] == 0
    assert job["method_settings"]["at"]["feature_layers"] == ["stage1:stage1", "stage2:stage2",
                                                               "stage3:stage3", "stage4:stage4"]
    assert summary["method"] == "kd+at"


# -- one teacher and one baseline per seed, shared by the jobs of a sweep ------------------------------
def test_stage_store_reuses_the_teacher_and_the_baseline(data_root, tmp_path):
    store = tmp_path / "stages"
    common = [*tiny(data_root, tmp_path), f"distill.stage_store={store}", "distill.teacher_seed=0",
              "distill.teacher_epochs=2"]
    first = pipeline.distill(compose_config([*common, "distill.method=dist"], tmp_path / "a",
                                            config_name="distill"))
    assert first["stages_run"] == ["teacher", "student_baseline", "student_distill"]
    def epochs(stage):
        return [json.loads(line)["epoch"] for line in (tmp_path / "a" / stage / "metrics.jsonl").open()]

    assert epochs("teacher") == [1, 2] and epochs("student_distill") == [1]  # distill.teacher_epochs
    # a logit method trains the bare student: its checkpoints load where the baseline's do
    keys = [torch.load(tmp_path / "a" / stage / "checkpoints" / "best.pt", weights_only=True)["model"].keys()
            for stage in ("student_baseline", "student_distill")]
    assert keys[0] == keys[1]
    second = pipeline.distill(compose_config([*common, "distill.method=rkd"], tmp_path / "b",
                                             config_name="distill"))
    assert second["stages_run"] == ["student_distill"]
    assert second["student_baseline_test_acc"] == first["student_baseline_test_acc"]
    other_seed = pipeline.distill(compose_config([*common, "distill.method=rkd", "trainer.seed=1"],
                                                 tmp_path / "c", config_name="distill"))
    assert other_seed["stages_run"] == ["student_baseline", "student_distill"]  # same teacher
    assert other_seed["teacher_test_acc"] == first["teacher_test_acc"]
    assert len(list(store.glob("teacher-*.pth"))) == 1
    assert len(list(store.glob("student_baseline-*.pth"))) == 2


# -- the methods table -----------------------------------------------------------------------------
def test_methods_table_pairs_by_seed_with_a_t_interval():
    def job(seed, method, base, dist):
        return {"seed": seed, "method": method, "method_label": method, "teacher_test_acc": 0.95,
                "student_baseline_test_acc": base, "student_distill_test_acc": dist}

    jobs = [job(0, "kd", 0.90, 0.91), job(1, "kd", 0.88, 0.90), job(2, "kd", 0.89, 0.90),
            job(0, "at", 0.90, 0.89), job(1, "at", 0.88, 0.88), job(2, "at", 0.89, 0.89)]
    table = methods_table(jobs)
    # kd: differences 1, 2, 1 points: mean 4/3, sd 0.5774, t(0.975, 2) = 4.3027
    half = 4.302652729911275 * 0.5773502691896258 / math.sqrt(3)
    assert f"| kd | 3 | 90.33 ± 0.58 | +1.33 | [{4 / 3 - half:+.2f}, {4 / 3 + half:+.2f}] | 3 of 3 |" in table
    assert "| at | 3 | 88.67 ± 0.58 | -0.33 |" in table
    assert "| baseline (hard labels) | 3 | 89.00 ± 1.00 |" in table
    one_seed = methods_table([job(0, "kd", 0.90, 0.91)])
    assert "| kd | 1 | 91.00 ± 0.00 | +1.00 | n/a (1 seed) | 1 of 1 |" in one_seed
