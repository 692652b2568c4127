"""PELA's two recipes: what the paper's text prescribes and what the official code (guoyang9/PELA) runs.

They disagree in places that change results (the official DeiT scripts switch the weight
perturbation off; the official Swin distils one pooled vector, not every block), so a row says
which one produced it. "official" is what each backbone declares its family's official script
runs (`BackboneInfo.pela_official`); "paper" puts what the text prints in its place (`PAPER_TEXT`).
An option set explicitly (``--set beta=0.5``) overrides either recipe for that one setting.

`DIFFERENCES` is every point where the two disagree, with the file and line in the official
repository it was read from; `reports.recipes` publishes it as ``results/paper/recipes.md``.
The text prints no value for alpha, beta or epsilon: the paper recipe keeps the backbone's
official alpha, takes beta 1 (both terms on, as its Table 7 ablates each) and epsilon 1e-3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from backbones.base import OFFICIAL_DEIT_PELA
from common.errors import PelaBenchError

RECIPES = ("official", "paper")
# The default: the paper's reported numbers were produced by the official scripts, and the text
# leaves alpha, beta and epsilon unstated, so a "paper" recipe has to borrow those from the code anyway.
DEFAULT_RECIPE = "official"
RWP_FORMS = ("squared", "linear")
RWP_REDUCTIONS = ("mean", "sum")
# "blocks": every hidden state the backbone declares (each block's output; a vision-language model's
# groups); "pooled": the final pooled, normalised feature the classifier reads; or a tuple of indices
# into every group's hidden states (negative counts from the end).
FdTargets = Union[str, tuple[int, ...]]
FD_TARGETS = ("blocks", "pooled")

OFFICIAL_REPO = "guoyang9/PELA"
OFFICIAL_COMMIT = "e0d3e1f"  # the snapshot read (merge of PR #2, "fix format")


@dataclass(frozen=True)
class PelaSettings:
    """The loss settings a PELA student trains with, once its recipe and options are resolved."""

    alpha: float  # feature-distillation weight
    beta: float  # weight-perturbation weight
    epsilon: float  # perturbation radius
    rwp_form: str  # "squared": (d_k - eps)^2; "linear": d_k - eps (eq. 6)
    rwp_reduce: str  # over the factorised matrices: "mean" (official) or "sum" (eq. 6)
    fd_targets: FdTargets

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        if isinstance(d["fd_targets"], tuple):
            d["fd_targets"] = list(d["fd_targets"])
        return d


def check_fd_targets(value: object) -> FdTargets:
    """`value` as fd_targets, or an error naming the option and what it accepts."""
    if isinstance(value, str) and value in FD_TARGETS:
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(i, int) and not isinstance(i, bool)
                                                          for i in value):
        if len(set(value)) != len(value):
            raise PelaBenchError(f"pela option fd_targets={list(value)} lists a hidden state twice")
        return tuple(value)
    raise PelaBenchError(f"pela option fd_targets={value!r}: use 'blocks', 'pooled' or a list of hidden-state "
                         f"indices such as [3,5,7,11]")


# What the text gives (eq. 4 over every layer; eq. 6 as printed: linear, summed over matrices; both terms
# on, as Table 7 ablates each). It prints no alpha: a backbone's official alpha fills it in. It prints no
# epsilon either: 1e-3, the official default, which the linear form's gradient never sees.
PAPER_TEXT: dict[str, object] = {"beta": 1.0, "epsilon": 1e-3, "rwp_form": "linear", "rwp_reduce": "sum",
                                 "fd_targets": "blocks"}


def check_recipe(recipe: object) -> str:
    if recipe not in RECIPES:
        raise PelaBenchError(f"recipe {recipe!r}: choose one of {', '.join(RECIPES)} (see results/paper/recipes.md)")
    return recipe  # type: ignore[return-value]


def recipe_settings(recipe: str, info: object) -> PelaSettings:
    """The settings recipe `recipe` gives a backbone: its official script's (`BackboneInfo.pela_official`),
    with, for the paper recipe, every setting the text prints in their place."""
    check_recipe(recipe)
    declared = getattr(info, "pela_official", None)  # None (no backbone given): the DeiT scripts'
    official = dict(OFFICIAL_DEIT_PELA if declared is None else declared)
    missing = sorted(set(PelaSettings.__dataclass_fields__) - set(official))
    if missing:
        raise PelaBenchError(f"{getattr(info, 'name', info)}: BackboneInfo.pela_official lacks {', '.join(missing)}")
    settings = {**official, **(PAPER_TEXT if recipe == "paper" else {})}
    targets = settings["fd_targets"]
    settings["fd_targets"] = tuple(targets) if isinstance(targets, list) else targets
    return PelaSettings(**settings)


@dataclass(frozen=True)
class Difference:
    """One point where the paper's text and the official code disagree."""

    point: str
    paper: str  # what the text says, and where
    official: str  # what the code does
    where: str  # file:line in the official repository
    project: str  # what each recipe here uses, and anything the project fixes for both


DIFFERENCES: tuple[Difference, ...] = (
    Difference(
        "Weight perturbation (L_rwp) on DeiT",
        "on for every model (eq. 7); Table 7 ablates it on DeiT-Base",
        "off: `--inf_norm_weight` defaults to 0.0 and neither DeiT script sets it",
        "DeiT/main.py:186; DeiT/scripts/train_base.sh:7-19; DeiT/scripts/train_large.sh:7-33; "
        "DeiT/engine.py:82-94",
        "paper: beta 1 · official: beta 0 (so `pela` and `pela_no_rwp` train alike on a ViT)",
    ),
    Difference(
        "Perturbation radius epsilon on Swin",
        "a radius epsilon (eq. 5), value not printed",
        "0: `--inf_norm_eps` defaults to 0.0 in the Swin entry point (1e-3 in DeiT's) and "
        "train_swin_b.sh sets only `--inf_norm_weight 1`",
        "Swin/main.py:74-75; Swin/scripts/train_swin_b.sh:11; DeiT/main.py:185",
        "paper: 1e-3 (the official DeiT/ALBEF default; with the linear form it does not reach the gradient) · "
        "official: 0",
    ),
    Difference(
        "What feature distillation compares on Swin",
        "the token features of every layer (eq. 4, identity mapping)",
        "one MSE on the final pooled, normalised feature: the model returns `feat` (after norm and avgpool) "
        "where every layer's output is commented out, and the loss zips over that (batch, C) tensor",
        "Swin/models/swin_transformer.py:610-614, 624-626; Swin/main.py:262-271",
        "paper: every block's output (`fd_targets=blocks`) · official: `fd_targets=pooled`",
    ),
    Difference(
        "What feature distillation compares on DeiT",
        "every layer (eq. 4)",
        "every block's output (the same), the final norm left out",
        "DeiT/models.py:28-38; DeiT/models_v2.py:252-261; DeiT/engine.py:75-78",
        "both: every block's output",
    ),
    Difference(
        "ALBEF's feature distillation and perturbation",
        "eq. 4 and 6 with weights alpha and beta, not printed",
        "distillation weighted 0.1 over the image encoder's states (patch embedding and every block), "
        "the text-only encoder's and the multimodal (MLM) pass's hidden states; perturbation added with "
        "weight 1 at epsilon 1e-3",
        "ALBEF/Pretrain.py:73-84; ALBEF/models/model_pretrain.py:215-220, 300-322; ALBEF/models/vit.py:171-175",
        "both: alpha 0.1 over those three groups (the paper's text gives no alpha, so it takes the code's); "
        "paper: beta 1 linear, summed · official: beta 1 squared, averaged, epsilon 1e-3",
    ),
    Difference(
        "Form of the perturbation penalty",
        "linear: sum_k (||W_hat - W||_inf - eps) (eq. 6)",
        "squared: `F.mse_loss(torch.norm(W_hat - W, inf), eps)` = (d_k - eps)^2, where torch.norm with p=inf "
        "and no dim is the entrywise max",
        "DeiT/engine.py:35; Swin/main.py:105; ALBEF/models/model_pretrain.py:316-319",
        "paper: `rwp_form=linear` · official: `rwp_form=squared`",
    ),
    Difference(
        "Perturbation summed or averaged over matrices",
        "summed over k in [K] (eq. 6)",
        "averaged: `norm_error / pair_num`",
        "DeiT/engine.py:38; Swin/main.py:108; ALBEF/models/model_pretrain.py:322",
        "paper: `rwp_reduce=sum` · official: `rwp_reduce=mean`",
    ),
    Difference(
        "Feature distillation: squared norm or element-wise mean",
        "(1/2N) sum_i ||X_s^i - X_t^i||^2 (eq. 4): a sum of squares per layer, halved",
        "element-wise `F.mse_loss` per layer, averaged over layers",
        "DeiT/engine.py:75-78; Swin/main.py:268-271; ALBEF/Pretrain.py:73-79",
        "both: the element-wise mean averaged over layers. With no alpha printed, a sum of squares "
        "(which grows with batch x tokens x width) could not be matched to any stated weight; the 1/2 is a "
        "constant alpha absorbs",
    ),
    Difference(
        "Logit distillation",
        "not part of the loss (eq. 7)",
        "an extra MSE between student and teacher logits, `--kd_beta`, 0 in every script (so off)",
        "DeiT/engine.py:80, 90; DeiT/main.py:183; DeiT/scripts/train_base.sh:17; Swin/main.py:72, 272-280",
        "both: absent",
    ),
    Difference(
        "Forward passes per DeiT step",
        "one (implied)",
        "two: the features come from `model(samples, output_feature=True)`, the base loss from a second "
        "`model(samples)` with fresh drop-path masks (Swin and ALBEF use one)",
        "DeiT/engine.py:70, 85-86",
        "both: one forward gives the features and the base loss",
    ),
    Difference(
        "Compression ratio of Swin",
        "'1/2 and 1/3 for the DeiT models and Swin' (Sec. 4.2), yet 'with 1/2 to 2/3 of the original model "
        "parameters' (Sec. 1) and Table 1's 62.2 M of 87.8 M",
        "1.5 (2/3 of the parameters kept)",
        "Swin/scripts/train_swin_b.sh:9",
        "both: 1.5, which reproduces Table 1's parameter count (`tools/check_paper_params.py`); the text's "
        "'1/3' is the share removed",
    ),
    Difference(
        "Layers kept full-rank",
        "every matrix multiplication (Sec. 3.1)",
        "by substring: norm, head, patch_embed, downsample (DeiT), plus attn.proj (Swin); cls and _proj (ALBEF); "
        "and every linear layer with fewer than 10 outputs",
        "DeiT/main.py:292-293; Swin/main.py:123-124; ALBEF/params.py:12; DeiT/low_rank.py:88-92",
        "both: each backbone's `lowrank_omit` and `lowrank_min_out`, the official lists",
    ),
    Difference(
        "Rank of each factorised layer",
        "d_lr = (1/kappa) d_in d_out / (d_in + d_out) (Sec. 3.5)",
        "floor of the same",
        "DeiT/low_rank.py:61-62",
        "both: the floor (`methods.lowrank.lowrank_rank`)",
    ),
    Difference(
        "Teacher mode during ALBEF's pre-training",
        "a frozen original model",
        "frozen but in train mode (dropout on in its text encoder) and its own momentum queue updated",
        "ALBEF/Pretrain.py:38, 70; ALBEF/Pretrain.py:145-147",
        "both: the teacher in eval mode, so its targets are deterministic",
    ),
)
