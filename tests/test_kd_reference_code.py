"""Each distillation term at labkit's default settings against an independent transcription of
the *reference code's* arithmetic (its reductions, weights and defaults), not the paper's formula.
The file and line each transcription follows is named in its docstring; the weights are the
ones those repositories train with, so a drifted constant in conf/distill.yaml fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from labkit.distill.methods import Outputs, build_methods, ce_weight

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "distill.yaml").distill, resolve=True)
STUDY = OmegaConf.to_container(OmegaConf.load(ROOT / "sweeps" / "distill_methods_cifar10.yaml"))


def rand(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def term(method: str, student: Outputs, teacher: Outputs, targets: torch.Tensor, t_shapes=None,
         s_shapes=None, **overrides) -> tuple[torch.Tensor, list]:
    distill = {**DEFAULTS, "method": method, **overrides}
    methods = build_methods(distill, t_shapes, s_shapes)
    return sum(m(student, teacher, targets) for m in methods), methods


# -- KD: mdistiller mdistiller/distillers/KD.py:8-13, 31-34; engine/cfg.py:61-64 ------------------
def ref_kd(logits_student, logits_teacher, target, temperature=4, ce_w=0.1, kd_w=0.9):
    """``ce_w * CE + kd_w * kl_div(log_softmax(s/T), softmax(t/T), "none").sum(1).mean() * T^2``."""
    log_pred_student = F.log_softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    loss_kd = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean() * temperature**2
    return ce_w * F.cross_entropy(logits_student, target) + kd_w * loss_kd


def test_kd_at_the_methods_study_settings_is_mdistillers():
    """The methods study runs KD as the references do (CE 0.1, KD 0.9, T 4); distill.py's own
    default alpha 0.5 is the lab's convention and checked with the same transcription."""
    s, t, y = rand(16, 10, seed=1, scale=3), rand(16, 10, seed=2, scale=3), torch.arange(16) % 10
    kd = STUDY["distill"]["kd"]
    assert (kd["alpha"], kd["temperature"]) == (0.9, 4.0)
    distill = {**DEFAULTS, "method": "kd", "kd": kd}
    got = ce_weight(distill) * F.cross_entropy(s, y) + term("kd", Outputs(s), Outputs(t), y, kd=kd)[0]
    assert got.item() == pytest.approx(ref_kd(s, t, y).item(), rel=1e-6)
    lab = {**DEFAULTS, "method": "kd"}
    got = ce_weight(lab) * F.cross_entropy(s, y) + term("kd", Outputs(s), Outputs(t), y)[0]
    assert got.item() == pytest.approx(ref_kd(s, t, y, ce_w=0.5, kd_w=0.5).item(), rel=1e-6)


# -- AT: attention-transfer utils.py:18-23 and cifar.py:223; mdistiller AT.py:8-21 -----------------
def ref_at(g_s, g_t, beta=1000.0, p=2):
    """``beta * sum_j (at(f_s) - at(f_t)).pow(2).mean()`` with ``at(f) = normalize(f.pow(p)
    .mean(1).view(n, -1))``; the larger *features* adaptive-average-pooled first (AT.py:12-16)."""
    def at(f):
        return F.normalize(f.pow(p).mean(1).reshape(f.size(0), -1))

    total = 0.0
    for f_s, f_t in zip(g_s, g_t, strict=True):
        s_h, t_h = f_s.shape[2], f_t.shape[2]
        if s_h > t_h:
            f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
        elif s_h < t_h:
            f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))
        total = total + (at(f_s) - at(f_t)).pow(2).mean()
    return beta * total


def test_at_is_the_authors_code_at_beta_1000():
    t_shapes = {"stage1": (16, 8, 8), "stage2": (32, 4, 4), "stage3": (64, 2, 2)}
    s_shapes = {"stage1": (4, 16, 16), "stage2": (8, 4, 4), "stage3": (16, 4, 4)}  # larger, equal, larger
    teacher = Outputs(rand(5, 10, seed=3), {k: rand(5, *v, seed=4 + i).relu()
                                            for i, (k, v) in enumerate(t_shapes.items())})
    student = Outputs(rand(5, 10, seed=9), {k: rand(5, *v, seed=10 + i).relu()
                                            for i, (k, v) in enumerate(s_shapes.items())})
    got, methods = term("at", student, teacher, torch.arange(5), t_shapes, s_shapes)
    assert [s for _, s in methods[0].pairs] == ["stage1", "stage2", "stage3"]  # every group output
    want = ref_at([student.features[k] for k in s_shapes], [teacher.features[k] for k in t_shapes])
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


# -- FitNet: mdistiller FitNet.py:39-43, _common.py:6-30 (ConvReg); cfg.py:90 -----------------------
class RefConvReg(nn.Module):
    """mdistiller ``_common.py:6-30``: conv (by the resolution ratio) -> BN -> ReLU."""

    def __init__(self, s_shape, t_shape):
        super().__init__()
        _, s_c, s_h, s_w = s_shape
        _, t_c, t_h, t_w = t_shape
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif s_h * 2 == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        else:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        self.bn = nn.BatchNorm2d(t_c)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


@pytest.mark.parametrize("s_map,t_map", [((4, 8, 8), (16, 4, 4)), ((4, 4, 4), (16, 8, 8)),
                                         ((4, 6, 6), (16, 4, 4)), ((4, 4, 4), (16, 4, 4))])
def test_fitnet_is_the_references_hint_loss_through_their_convreg(s_map, t_map):
    """``100 * F.mse_loss(conv_reg(f_s), f_t)`` with the same connector weights."""
    t_shapes, s_shapes = {"stage2": t_map}, {"stage2": s_map}
    teacher = Outputs(rand(6, 10, seed=1), {"stage2": rand(6, *t_map, seed=2).relu()})
    student = Outputs(rand(6, 10, seed=3), {"stage2": rand(6, *s_map, seed=4)})
    fitnet = build_methods({**DEFAULTS, "method": "fitnet"}, t_shapes, s_shapes)[0]
    ref = RefConvReg((6, *s_map), (6, *t_map))
    connector = fitnet.connectors["stage2__stage2"].proj
    ref.conv.load_state_dict(connector[0].state_dict())
    ref.bn.load_state_dict(connector[1].state_dict())
    want = 100.0 * F.mse_loss(ref(student.features["stage2"]), teacher.features["stage2"])
    got = fitnet(student, teacher, torch.arange(6))
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


# -- RKD: mdistiller RKD.py:8-50; cfg.py:75-82 (distance 25, angle 50, eps 1e-12, not squared) -------
def ref_rkd(f_s, f_t, squared=False, eps=1e-12, distance_weight=25, angle_weight=50):
    def pdist(e):
        e_square = e.pow(2).sum(dim=1)
        res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps)
        res = res if squared else res.sqrt()
        res = res.clone()
        res[range(len(e)), range(len(e))] = 0
        return res

    stu, tea = f_s.reshape(f_s.shape[0], -1), f_t.reshape(f_t.shape[0], -1)
    t_d = pdist(tea)
    t_d = t_d / t_d[t_d > 0].mean()
    d = pdist(stu)
    d = d / d[d > 0].mean()
    loss_d = F.smooth_l1_loss(d, t_d)
    norm_td = F.normalize(tea.unsqueeze(0) - tea.unsqueeze(1), p=2, dim=2)
    t_angle = torch.bmm(norm_td, norm_td.transpose(1, 2)).view(-1)
    norm_sd = F.normalize(stu.unsqueeze(0) - stu.unsqueeze(1), p=2, dim=2)
    s_angle = torch.bmm(norm_sd, norm_sd.transpose(1, 2)).view(-1)
    loss_a = F.smooth_l1_loss(s_angle, t_angle)
    return distance_weight * loss_d + angle_weight * loss_a


def test_rkd_is_mdistillers_on_a_batch_of_the_references_size():
    """On a larger batch the relations are those of its first ``relation_batch`` (64) samples:
    the references' batch size, and the angle term's n^3 stays affordable."""
    t_shapes, s_shapes = {"pre_logits": (32,)}, {"pre_logits": (8,)}
    teacher = Outputs(rand(80, 10, seed=1), {"pre_logits": rand(80, 32, seed=2).relu()})
    student = Outputs(rand(80, 10, seed=3), {"pre_logits": rand(80, 8, seed=4).relu()})
    got, _ = term("rkd", student, teacher, torch.arange(80), t_shapes, s_shapes)
    want = ref_rkd(student.features["pre_logits"][:64], teacher.features["pre_logits"][:64])
    assert got.item() == pytest.approx(want.item(), rel=1e-4)


# -- DKD: mdistiller DKD.py:8-51, 72; cfg.py:163-167 ---------------------------------------------
def ref_dkd(logits_student, logits_teacher, target, alpha=1.0, beta=8.0, temperature=4.0):
    gt_mask = torch.zeros_like(logits_student).scatter_(1, target.unsqueeze(1), 1).bool()
    other_mask = torch.ones_like(logits_student).scatter_(1, target.unsqueeze(1), 0).bool()

    def cat_mask(t):
        return torch.cat([(t * gt_mask).sum(1, keepdims=True), (t * other_mask).sum(1, keepdims=True)], 1)

    pred_student = cat_mask(F.softmax(logits_student / temperature, dim=1))
    pred_teacher = cat_mask(F.softmax(logits_teacher / temperature, dim=1))
    tckd = F.kl_div(torch.log(pred_student), pred_teacher, reduction="sum") * temperature**2 / target.shape[0]
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd = (F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum") * temperature**2
            / target.shape[0])
    return alpha * tckd + beta * nckd


def test_dkd_is_mdistillers_after_its_warm_up():
    s, t, y = rand(16, 10, seed=1, scale=2), rand(16, 10, seed=2, scale=2), torch.arange(16) % 10
    dkd = build_methods({**DEFAULTS, "method": "dkd"})[0]
    assert (dkd.alpha, dkd.beta, dkd.temperature) == (1.0, 8.0, 4.0)  # the resnet32x4 -> 8x4 pair
    dkd.set_total_steps(240)  # warm-up 20 of 240 (DKD.py:72 "min(epoch / warmup, 1.0)")
    ramp = [dkd(Outputs(s), Outputs(t), y).item() for _ in range(21)]
    full = ref_dkd(s, t, y).item()
    assert ramp[-1] == pytest.approx(full, rel=1e-5) and ramp[19] == pytest.approx(full, rel=1e-5)
    assert ramp[9] == pytest.approx(full * 10 / 20, rel=1e-5)


# -- DIST: image_classification_sota lib/models/losses/dist_kd.py:4-34, kd_loss.py:167,
#    configs/strategies/distill/dist_cifar.yaml:35 (kd_loss_weight 2), kd: dist_t4 -----------------
def ref_dist(z_s, z_t, beta=1.0, gamma=1.0, tau=4.0, kd_loss_weight=2.0):
    def pearson(a, b, eps=1e-8):
        a, b = a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1)
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)

    y_s, y_t = (z_s / tau).softmax(dim=1), (z_t / tau).softmax(dim=1)
    inter = tau**2 * (1 - pearson(y_s, y_t).mean())
    intra = tau**2 * (1 - pearson(y_s.transpose(0, 1), y_t.transpose(0, 1)).mean())
    return kd_loss_weight * (beta * inter + gamma * intra)


def test_dist_is_the_authors_cifar_recipe():
    s, t, y = rand(16, 10, seed=1, scale=3), rand(16, 10, seed=2, scale=3), torch.arange(16) % 10
    got, _ = term("dist", Outputs(s), Outputs(t), y)
    assert got.item() == pytest.approx(ref_dist(s, t).item(), rel=1e-5)
