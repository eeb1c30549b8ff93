"""Model Tailor's compensation sign, measured on real fine-tunes: the calibration reconstruction error of every
tailored Linear with the error subtracted (OBS, SparseGPT), added (the official code) and not spread at all.

    python benchmarks/tailor_compensation.py RUN_DIR [--keep 0.1] [--batches 8]

RUN_DIR is a tuning run (`make demo` writes runs/demo); every trial's last checkpoint is used. For each Linear of
the language model and the projector, H comes from the fine-tuned model on its own task's training data, and the
error of a tailored W is the relative output error on that data: tr((W - W_ft) H (W - W_ft)^T) / tr(W_ft H W_ft^T).
Prints the mean over layers per checkpoint and sign, then a last-line JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def relative_error(w, w_ft, h) -> float:
    d = (w - w_ft).double()
    ref = w_ft.double()
    return float(((d @ h) * d).sum() / ((ref @ h) * ref).sum())


def main() -> None:
    from serving.transformers_engine import load_model_and_processor
    from tuners.mitigations.build import _run, calibration_batches, fine_tuned_linears
    from tuners.mitigations.settings import TailorSettings
    from tuners.mitigations.tailor import HessianHook, tailor_weight, with_bias
    from tuners.mitigations.weights import merged
    from tuners.rows import checkpoint_rows

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--keep", type=float, default=0.1)
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    run = Path(args.run_dir)
    model_name = json.loads((run / "experiment.json").read_text())["model"]["name"]
    base, processor = load_model_and_processor(model_name, device="cpu")
    rows = checkpoint_rows(run / "train")
    last = {}
    for r in rows:
        if r.epoch > last.get(r.trial_id, r).epoch or r.trial_id not in last:
            last[r.trial_id] = r
    results = []
    print(f"relative calibration error of the tailored Linears (keep {args.keep:.0%}), mean over layers")
    print(f"{'checkpoint':>34} {'layers':>6} {'subtract':>10} {'none':>10} {'add':>10}")
    for row in sorted(last.values(), key=lambda r: r.row_id):
        ft = merged(base, row.checkpoint)
        s = TailorSettings(keep=args.keep, calibration_batches=args.batches, calibration_batch_size=8)
        batches = calibration_batches(row.train_dataset, processor, s, "cpu")
        pre_modules = dict(base.named_modules())
        hooks = {name: HessianHook(ft.get_submodule(name)) for name in fine_tuned_linears(base, ft, None)}
        _run(ft, batches, stop_at=ft.lm_head)  # every hooked Linear sees the batches once
        errors = {"subtract": [], "none": [], "add": []}
        for name, hook in hooks.items():
            h = hook.remove()
            w_ft = with_bias(dict(ft.named_modules())[name])
            for sign in errors:
                w, _ = tailor_weight(with_bias(pre_modules[name]), w_ft,
                                     h.float(), s.model_copy(update={"compensation": sign}))
                errors[sign].append(relative_error(w, w_ft, h))
        mean = {k: sum(v) / max(len(v), 1) for k, v in errors.items()}
        label = f"{row.method}, {row.train_dataset} e{row.epoch}"
        print(f"{label:>34} {len(hooks):>6} {mean['subtract']:>10.3e} {mean['none']:>10.3e} {mean['add']:>10.3e}")
        results.append({"checkpoint": row.row_id, "layers": len(hooks), **mean})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
