"""Weight-space baselines on dense task vectors (fine-tuned minus base), through peft's merge utilities.

WiSE-FT (Wortsman et al. 2022) interpolates one fine-tune with its base; DARE (Yu et al. 2024) drops a share of a
task vector at random and rescales the rest; task arithmetic (Ilharco et al. 2023) and TIES (Yadav et al. 2023)
merge several fine-tunes' task vectors into one multi-task model. peft >= 0.19 is required (earlier DARE rescaling
did nothing).
"""
from __future__ import annotations

import torch
from peft.utils import merge_utils

from tuners.mitigations.settings import DareSettings, TaskArithmeticSettings, TiesSettings, WiseFtSettings


def wise_ft(pre: torch.Tensor, ft: torch.Tensor, s: WiseFtSettings) -> torch.Tensor:
    return pre + s.alpha * (ft - pre)


def dare(pre: torch.Tensor, ft: torch.Tensor, s: DareSettings) -> torch.Tensor:
    """peft's dare_linear draws from torch's global RNG: the caller seeds it with `s.seed` once per patch."""
    weights = torch.ones(1, device=pre.device, dtype=pre.dtype)
    return pre + merge_utils.dare_linear([ft - pre], weights, density=1 - s.drop)


def task_arithmetic(pre: torch.Tensor, fts: list[torch.Tensor], s: TaskArithmeticSettings) -> torch.Tensor:
    weights = torch.full((len(fts),), s.weight, device=pre.device, dtype=pre.dtype)
    return pre + merge_utils.task_arithmetic([ft - pre for ft in fts], weights)


def ties(pre: torch.Tensor, fts: list[torch.Tensor], s: TiesSettings) -> torch.Tensor:
    weights = torch.full((len(fts),), s.weight, device=pre.device, dtype=pre.dtype)
    return pre + merge_utils.ties([ft - pre for ft in fts], weights, density=s.density,
                                  majority_sign_method=s.majority_sign)
