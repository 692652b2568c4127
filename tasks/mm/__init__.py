"""The bridge to the OpenMMLab toolboxes (mmengine, mmsegmentation, mmdetection).

Import this package before any mm* module: it first installs the torchvision
stand-ins for the compiled mmcv ops (`ops`), then the checkpoint allow-list
(`compat`), then registers the project's backbone adapter and data sets into
mmseg's and mmdet's registries (`adapter`).
"""

from tasks.mm import ops as _ops

_ops.install()

from tasks.mm import compat as _compat  # noqa: E402  (must follow the ops stand-in)

_compat.allow_mmengine_checkpoints()

from tasks.mm.adapter import PelaBackbone  # noqa: E402

__all__ = ["PelaBackbone"]
