"""Any timm ViT-style or Swin model by name: ``create_backbone("timm:vit_small_patch16_224")``.

The metadata comes from the model itself (the same readers the paper presets use),
so users can benchmark the models they already run, not only the paper's three.
Models without a preset get the paper's ViT ratio (2) and keep the classifier,
the patch embedding and the norms full-rank; `--ratio` and `keep_full_rank`
change both as for any backbone.
"""

from __future__ import annotations

from common.errors import PelaBenchError

PREFIX = "timm:"
DEFAULT_RATIO = 2.0


def is_timm_name(name: str) -> bool:
    return name.startswith(PREFIX)


def create_timm_backbone(name: str, pretrained: bool = False, **overrides):
    import timm
    from timm.models.swin_transformer import SwinTransformer

    from backbones.swin import SwinBackbone, swin_info
    from backbones.vit import ViTBackbone, vit_info

    model_name = name[len(PREFIX):]
    if not model_name:
        raise PelaBenchError("--backbone timm:<name> needs a timm model name, e.g. timm:vit_small_patch16_224")
    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('_')[0]}*")[:8]
        raise PelaBenchError(f"timm has no model {model_name!r}" + (f"; similar: {', '.join(close)}" if close else ""))
    try:
        model = timm.create_model(model_name, pretrained=pretrained, **overrides)
    except TypeError as exc:  # an override the model's constructor does not take
        raise PelaBenchError(f"timm model {model_name!r} rejects the settings {sorted(overrides)}: {exc}") from None
    except (RuntimeError, OSError) as exc:
        if not pretrained:
            raise
        raise PelaBenchError(f"cannot load timm's hub weights for {model_name!r} (no network, or no weights "
                             f"published): {type(exc).__name__}: {exc}") from None
    if isinstance(model, SwinTransformer):
        return SwinBackbone(model, swin_info(name, model, model_name, DEFAULT_RATIO))
    is_vit_like = all(hasattr(model, a) for a in ("blocks", "patch_embed", "embed_dim", "forward_intermediates"))
    if is_vit_like and hasattr(model.patch_embed, "img_size"):
        return ViTBackbone(model, vit_info(name, model, model_name, DEFAULT_RATIO))
    raise PelaBenchError(f"timm model {model_name!r} ({type(model).__name__}) is neither a ViT-style model nor a "
                         "Swin; the suite reads block outputs, stages and attention from those two families")
