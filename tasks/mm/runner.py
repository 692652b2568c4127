"""mmengine's Runner, kept on the suite's device and with a readable console.

Imported lazily (by `tasks.mm.engine`), after `tasks.mm` has installed the ops
stand-in, so a classification-only run never pays for importing mmengine.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from mmengine.model import is_model_wrapper, revert_sync_batchnorm
from mmengine.runner import Runner
from torch import nn

# Console lines a fine-tune repeats thousands of times (one per parameter group for Swin-B),
# or dumps once per fine-tune (environment, hook order). They stay in the work_dir's log file.
_CONSOLE_NOISE = ("paramwise_options --", "Hooks will be executed", "\n----", "Distributed training is not used")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_CONSOLE_NOISE)


class DeviceRunner(Runner):
    """The Runner on an explicit `device`.

    mmengine moves the model to `mmengine.device.get_device()` (any accelerator
    it can see) and maps resumed checkpoints there, so `--device cpu` on a GPU
    host would otherwise train on the GPU. Distributed runs keep mmengine's own
    placement.
    """

    def __init__(self, *, device: torch.device, **kwargs: Any) -> None:
        self.suite_device = device  # read by wrap_model, which Runner.__init__ calls
        super().__init__(**kwargs)

    def build_logger(self, log_level: int | str = "INFO", log_file: str | None = None, **kwargs: Any):
        logger = super().build_logger(log_level=log_level, log_file=log_file, **kwargs)
        for handler in logger.handlers:
            if not isinstance(handler, logging.FileHandler):
                handler.addFilter(_DropNoise())
        return logger

    def wrap_model(self, model_wrapper_cfg: dict | None, model: nn.Module) -> nn.Module:
        if self.distributed and self.suite_device.type == "cpu" and not is_model_wrapper(model):
            # mmengine's wrapper assumes a GPU per rank (device_ids=[LOCAL_RANK]); a CPU module takes none.
            from mmengine.model import MMDistributedDataParallel

            return MMDistributedDataParallel(module=model.to(self.suite_device), device_ids=None,
                                             find_unused_parameters=True)
        if self.distributed or is_model_wrapper(model):
            return super().wrap_model(model_wrapper_cfg, model)
        return revert_sync_batchnorm(model.to(self.suite_device))

    def resume(self, filename: str, resume_optimizer: bool = True, resume_param_scheduler: bool = True,
               map_location: Any = "default") -> None:
        if map_location == "default":
            map_location = str(self.suite_device)
        super().resume(filename, resume_optimizer, resume_param_scheduler, map_location)
