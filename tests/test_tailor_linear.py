"""Model Tailor on single Linear layers, against brute-force references written here with numpy."""
import numpy as np
import pytest
import torch

from tuners.mitigations.settings import TailorSettings
from tuners.mitigations.tailor import HessianHook, tailor_linear, tailor_weight


def layer_pair(rows=24, cols=40, tokens=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    w_pre = torch.randn(rows, cols, generator=g)
    w_ft = w_pre + 0.3 * torch.randn(rows, cols, generator=g)
    x = torch.randn(tokens, cols, generator=g) @ (torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=g))
    return w_pre, w_ft, x, 2 / tokens * (x.T @ x)


def zscore(a):
    std = a.std(axis=1, ddof=1, keepdims=True)
    return np.where(std > 0, (a - a.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1), 0)


def reference_mask(w_pre, w_ft, h, s):
    """No compensation: every block's importance from the fine-tuned weight, then its exact top share."""
    pre, ft, hh = w_pre.double().numpy(), w_ft.double().numpy(), h.double().numpy()
    hh = hh + s.damping * np.mean(np.diag(hh)) * np.eye(len(hh))
    u = np.linalg.cholesky(np.linalg.inv(hh)).T  # upper factor of H^-1
    mask = np.zeros(ft.shape, dtype=bool)
    for i1 in range(0, ft.shape[1], s.block_size):
        i2 = min(i1 + s.block_size, ft.shape[1])
        d = np.diag(u)[i1:i2]
        num = (ft[:, i1:i2] - pre[:, i1:i2]) ** 2 if s.sensitivity == "delta" else ft[:, i1:i2] ** 2
        imp = s.fusion * zscore(np.abs(ft - pre)[:, i1:i2]) + (1 - s.fusion) * zscore(num / d ** 2)
        if s.selection == "row":
            k = round(s.keep * (i2 - i1))
            for r in range(len(imp)):
                mask[r, i1 + np.argsort(-imp[r], kind="stable")[:k]] = True
        else:
            k = round(s.keep * imp.size)
            flat = np.zeros(imp.size, dtype=bool)
            flat[np.argsort(-imp.ravel(), kind="stable")[:k]] = True
            mask[:, i1:i2] = flat.reshape(imp.shape)
    return mask


@pytest.mark.parametrize("selection", ["block", "row"])
@pytest.mark.parametrize("sensitivity", ["delta", "weight"])
def test_mask_is_exactly_the_top_share_of_each_block(selection, sensitivity):
    w_pre, w_ft, _, h = layer_pair()
    s = TailorSettings(keep=0.1, block_size=16, selection=selection, sensitivity=sensitivity, compensation="none")
    w, kept = tailor_weight(w_pre, w_ft, h, s)
    expected = reference_mask(w_pre, w_ft, h, s)
    assert (kept.numpy() == expected).all()
    for i1 in range(0, 40, 16):  # blocks of 16, 16 and 8 columns
        block = kept[:, i1:i1 + 16]
        if selection == "block":
            assert int(block.sum()) == round(0.1 * block.numel())
        else:
            assert (block.sum(1) == round(0.1 * block.shape[1])).all()
    # no compensation: kept entries are fine-tuned, the rest pre-trained, exactly
    assert torch.equal(w, torch.where(kept, w_ft, w_pre))


def reconstruction_error(w, w_ft, x):
    return float(((x @ (w - w_ft).T) ** 2).mean())


def test_subtracting_compensation_lowers_the_calibration_error_and_adding_raises_it():
    errors = {}
    for sign in ("none", "subtract", "add"):
        per_seed = []
        for seed in range(3):
            w_pre, w_ft, x, h = layer_pair(seed=seed)
            w, _ = tailor_weight(w_pre, w_ft, h, TailorSettings(keep=0.3, block_size=16, compensation=sign))
            per_seed.append(reconstruction_error(w, w_ft, x))
        errors[sign] = per_seed
    for seed in range(3):
        assert errors["subtract"][seed] < errors["none"][seed] < errors["add"][seed]


def test_compensation_changes_only_kept_entries():
    w_pre, w_ft, _, h = layer_pair()
    w, kept = tailor_weight(w_pre, w_ft, h, TailorSettings(keep=0.2, block_size=16))
    assert torch.equal(w[~kept], w_pre[~kept])
    assert not torch.equal(w[kept], w_ft[kept])  # the kept ones carry the reverted ones' error


@pytest.mark.parametrize("compensation", ["subtract", "add", "none"])
def test_keep_one_is_the_fine_tune_and_keep_zero_the_base_exactly(compensation):
    w_pre, w_ft, _, h = layer_pair()
    w1, kept1 = tailor_weight(w_pre, w_ft, h, TailorSettings(keep=1.0, compensation=compensation))
    w0, kept0 = tailor_weight(w_pre, w_ft, h, TailorSettings(keep=0.0, compensation=compensation))
    assert kept1.all() and torch.equal(w1, w_ft)
    assert not kept0.any() and torch.equal(w0, w_pre)


def test_a_linear_with_bias_keeps_or_reverts_it_as_one_more_column():
    torch.manual_seed(0)
    pre, ft = torch.nn.Linear(12, 6), torch.nn.Linear(12, 6)
    x = torch.randn(50, 12)
    for keep, expected in ((1.0, ft), (0.0, pre)):
        tailored = torch.nn.Linear(12, 6)
        tailored.load_state_dict(ft.state_dict())
        hook = HessianHook(tailored)
        tailored(x)
        tailor_linear(pre, tailored, hook.remove(), TailorSettings(keep=keep))
        assert torch.equal(tailored.weight, expected.weight) and torch.equal(tailored.bias, expected.bias)


def test_the_hessian_hook_skips_padding_and_matches_the_formula():
    torch.manual_seed(0)
    linear = torch.nn.Linear(5, 3, bias=False)
    x = torch.randn(2, 4, 5)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    hook = HessianHook(linear)
    hook.mask = mask
    linear(x)
    valid = x[mask.bool()].double()
    assert torch.allclose(hook.remove(), 2 / len(valid) * valid.T @ valid)


def test_settings_reject_out_of_range_values():
    with pytest.raises(ValueError):
        TailorSettings(keep=1.5)
    with pytest.raises(ValueError):
        TailorSettings(layers="20-x")
