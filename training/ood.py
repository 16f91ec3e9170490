"""Fit the out-of-distribution detector of trained checkpoints and measure it: which inputs get
`in_distribution: false`, for held-out synthetic galaxies, the 100 real samples and images that are
not galaxies.

    python -m training.ood --run checkpoints/demo [--data data/synthetic_demo.h5] [--out docs/ood]

For each model it computes the penultimate-layer features of N_TRAIN rows of the training split,
the whole validation split and N_TEST rows of the test split, and of generated non-galaxy images
(simulation.outliers: HEAD_PER_FAMILY of each family, from their own seed). It scores every
candidate with its threshold at QUANTILE of the validation split's scores: the maximum (calibrated)
softmax probability, the energy score, the Mahalanobis distance to the nearest class mean under a
shared covariance in 16, 64 and 256 principal components (Lee et al. 2018), and the reject head of
galaxy_morph.ood (outlier exposure: a logistic regression on the frozen features, galaxies of the
training split against the generated images). The measurement set is the test rows, the 100 real
samples, other generated images (N_PER_FAMILY a family, another seed) and the photographs that
installed packages ship; neither the photographs nor the real samples fit anything. The reject
head is written to RUN/M/ood.npz (the archives ship it, the handler applies it); the table (OUT.md,
OUT.json) names the candidate that flags the most generated measurement images, and the command
warns when that is not the head. Features are cached in runs/ood/.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from galaxy_morph.data import GalaxyH5Dataset, load_split
from galaxy_morph.imaging import decode_image
from galaxy_morph.models import features_and_logits, load_checkpoint
from galaxy_morph.ood import OODDetector, cheap_check
from galaxy_morph.transforms import to_pil
from simulation import outliers
from survey.samples import sample_files

N_TRAIN, N_TEST, N_PER_FAMILY, HEAD_PER_FAMILY = 3000, 1000, 16, 48
QUANTILE = 0.99  # 1 % of held-out synthetic galaxies flagged by construction
KS = (16, 64, 256)


def mahalanobis(train_f, train_y, k: int):
    """Lee et al. (2018) in the top-k principal components: min over classes of the squared
    distance under the shared within-class covariance (measured here, not shipped)."""
    mean = train_f.mean(0)
    comps = np.linalg.svd(train_f - mean, full_matrices=False)[2][:k]
    z = (train_f - mean) @ comps.T
    classes = np.unique(train_y)
    means = np.stack([z[train_y == c].mean(0) for c in classes])
    within = z - means[np.searchsorted(classes, train_y)]
    cov = within.T @ within / len(z)
    prec = np.linalg.inv(cov + 1e-3 * np.trace(cov) / k * np.eye(k))

    def score(f):
        d = ((f - mean) @ comps.T)[:, None, :] - means[None]
        return np.einsum("nck,kl,ncl->nc", d, prec, d).min(1) / k
    return score


@torch.no_grad()
def features(ckpt, images, batch=64) -> tuple[np.ndarray, np.ndarray]:
    """(features, logits) of PIL images or uint8 arrays, the eval transform, plain view."""
    f, z = [], []
    for i in range(0, len(images), batch):
        x = torch.stack([ckpt.transform(im if not isinstance(im, np.ndarray) else to_pil(im))
                         for im in images[i:i + batch]])
        a, b = features_and_logits(ckpt.model, x)
        f.append(a.double().numpy())
        z.append(b.double().numpy())
    return np.concatenate(f), np.concatenate(z)


def split_rows(data, indices):
    ds = GalaxyH5Dataset(data, indices)
    return [ds[i][0] for i in range(len(ds))], ds.labels[ds.indices]


def compute(folder: Path, data: str, cache: Path) -> dict:
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{folder.name}_features.npz"
    ckpt = load_checkpoint(folder)
    if path.is_file():
        return dict(np.load(path)), ckpt
    split, _ = load_split(folder / ckpt.meta.get("split_file", "split.json"))
    rng = np.random.default_rng(0)
    sets = {"train": rng.choice(split["train"], min(N_TRAIN, len(split["train"])), replace=False),
            "val": np.asarray(split["val"]), "test": rng.choice(split["test"], min(N_TEST, len(split["test"])),
                                                                 replace=False)}
    out = {}
    for name, idx in sets.items():
        images, y = split_rows(data, np.sort(idx))
        print(f"{folder.name}: features of {len(images)} {name} rows", file=sys.stderr, flush=True)
        out[f"{name}_f"], out[f"{name}_z"] = features(ckpt, images)
        out[f"{name}_y"] = y
    real = sample_files()
    out["real_f"], out["real_z"] = features(ckpt, [decode_image(p.read_bytes()) for p, _ in real])
    np.savez(path, **out)
    return out, ckpt


def non_galaxies() -> dict[str, list[np.ndarray]]:
    sets = outliers.generated(np.random.default_rng(7), N_PER_FAMILY)
    sets["photographs"] = list(outliers.photographs().values())
    return sets


def candidate_scores(det_by_k: dict, f, z, temperature, head=None) -> dict:
    """Higher is more out of distribution, for every candidate. softmax(log softmax(z) / T) is
    softmax(z / T): the calibrated maximum probability."""
    z = torch.from_numpy(z)
    out = {"msp": 1 - torch.softmax(z / temperature, 1).max(1).values.numpy(),
           "energy": -torch.logsumexp(z, 1).numpy()}
    for k, score in det_by_k.items():
        out[f"mahalanobis_{k}"] = score(f)
    if head is not None:
        out["reject_head"] = head.score(f)
    return out


def measure(run: Path, data: str | None, out: Path, cache: Path) -> dict:
    folders = sorted(d for d in run.iterdir() if (d / "meta.json").is_file()) if not (run / "meta.json").is_file() else [run]
    junk = non_galaxies()
    cheap = {fam: [cheap_check(im) for im in ims] for fam, ims in junk.items()}
    result = {"quantile": QUANTILE, "n_per_family": {f: len(v) for f, v in junk.items()}, "models": {}}
    shipped_flags = {}
    for folder in folders:
        feats, ckpt = compute(folder, data or load_checkpoint(folder).meta["data"]["path"], cache)
        dets = {k: mahalanobis(feats["train_f"], feats["train_y"], k) for k in KS}
        head_images = [im for ims in outliers.generated(np.random.default_rng(1000), HEAD_PER_FAMILY).values()
                       for im in ims]
        head = OODDetector.fit(feats["train_f"], features(ckpt, head_images)[0], feats["val_f"], quantile=QUANTILE)
        t = ckpt.temperature(False)
        junk_fz = {fam: features(ckpt, ims) for fam, ims in junk.items()}
        scores = {s: candidate_scores(dets, *fz, t, head)
                  for s, fz in [("val", (feats["val_f"], feats["val_z"])), ("test", (feats["test_f"], feats["test_z"])),
                                ("real", (feats["real_f"], feats["real_z"]))]}
        scores.update({fam: candidate_scores(dets, f, z, t, head) for fam, (f, z) in junk_fz.items()})
        generated = [fam for fam in junk if fam != "photographs"]
        table, flags = {}, {}
        for cand in scores["val"]:
            thr = float(np.quantile(scores["val"][cand], QUANTILE))
            neg = np.concatenate([scores[fam][cand] for fam in generated])
            auroc = roc_auc_score(np.r_[np.zeros(len(scores["val"][cand])), np.ones(len(neg))],
                                  np.r_[scores["val"][cand], neg])
            row = {"threshold": thr, "auroc_generated": float(auroc)}
            pooled = []
            for s in ["test", "real", *junk]:
                model_flag = scores[s][cand] > thr
                if s in junk:
                    flagged = model_flag | np.array([c is not None for c in cheap[s]])
                    row[s] = {"model_only": float(model_flag.mean()), "with_cheap_checks": float(flagged.mean())}
                    pooled.append(flagged)
                    flags.setdefault(cand, {})[s] = flagged
                else:
                    row[s] = float(model_flag.mean())
                    flags.setdefault(cand, {})[s] = model_flag
            row["all_non_galaxies"] = float(np.concatenate(pooled).mean())
            table[cand] = row
        kept = max(table, key=lambda c: np.mean([table[c][f]["model_only"] for f in generated]))
        if kept != "reject_head":  # only the head is stored in ood.npz; say so rather than ship another
            print(f"{folder.name}: {kept} flags more generated images than the reject head", file=sys.stderr)
        head.save(folder)
        real_flags = scores["real"]["reject_head"] > head.threshold
        result["models"][folder.name] = {"candidates": table, "kept": kept, "shipped": "reject_head",
                                         "threshold": head.threshold,
                                         "real_flagged": [p.name for (p, _), f in zip(sample_files(), real_flags) if f]}
        shipped_flags[folder.name] = flags["reject_head"]
    if len(shipped_flags) >= 2:  # the workflow: flagged when any member flags
        sets = next(iter(shipped_flags.values()))
        anyf = {s: np.any([f[s] for f in shipped_flags.values()], 0) for s in sets}
        result["ensemble_any_member"] = {"real": float(anyf["real"].mean()), "test": float(anyf["test"].mean()),
                                         "all_non_galaxies": float(np.concatenate([anyf[s] for s in junk]).mean()),
                                         **{s: float(anyf[s].mean()) for s in junk}}
        print(f"{folder.name}: kept {kept}; wrote {folder / 'ood.npz'}", file=sys.stderr, flush=True)
    write_report(result, out)
    return result


def write_report(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    fams = list(result["n_per_family"])
    lines = ["# The \"not a galaxy\" flag: what gets `in_distribution: false`", "",
             "Read this to know how far to trust the flag on each answer (docs/api.md#not-a-galaxy). "
             "Every figure is the fraction of images flagged, for the shipped demo models. Made by",
             "", "    python -m training.ood --run checkpoints/demo --data data/synthetic_demo.h5", "",
             f"Each candidate's threshold is the {result['quantile']:.0%} quantile of its scores on the "
             "validation split (synthetic galaxies), so about 1 % of held-out synthetic galaxies are flagged "
             "by construction. The real samples (100 Galaxy10 DECaLS cutouts) and the photographs fit "
             "nothing: they only measure. Non-galaxy families: "
             + ", ".join(f"{f} ({n})" for f, n in result["n_per_family"].items())
             + "; each cell is the share flagged by the model's score alone / with the cheap checks "
             "(constant image, no source above the sky) first, as the server does.", ""]
    for name, m in result["models"].items():
        lines += [f"## {name}", "", f"Flags the most generated non-galaxy images: `{m['kept']}`; shipped in "
                  f"`ood.npz`: `{m['shipped']}` (threshold {m['threshold']:.3f}). Real samples it flags: "
                  f"{', '.join(m['real_flagged']) or 'none'}.", "",
                  "Fraction flagged (non-galaxy families: by the model alone / with the cheap checks first):", "",
                  "| candidate | AUROC | synthetic test | real samples | all non-galaxies | " + " | ".join(fams) + " |",
                  "|---|---|---|---|---|" + "---|" * len(fams)]
        for cand, r in m["candidates"].items():
            cells = [f"{r[f]['model_only']:.2f} / {r[f]['with_cheap_checks']:.2f}" for f in fams]
            lines.append(f"| {cand} | {r['auroc_generated']:.3f} | {r['test']:.3f} | {r['real']:.2f} | "
                         f"{r['all_non_galaxies']:.2f} | " + " | ".join(cells) + " |")
        lines.append("")
    e = result.get("ensemble_any_member")
    if e:
        lines += ["## The ensemble (flagged when any member flags, reject heads and cheap checks)", "",
                  "| synthetic test | real samples | all non-galaxies | " + " | ".join(fams) + " |",
                  "|---|---|---|" + "---|" * len(fams),
                  f"| {e['test']:.3f} | {e['real']:.2f} | {e['all_non_galaxies']:.2f} | "
                  + " | ".join(f"{e[f]:.2f}" for f in fams) + " |", ""]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data", default=None)
    p.add_argument("--out", default="docs/ood")
    p.add_argument("--cache", default="runs/ood")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    measure(Path(args.run), args.data, Path(args.out), Path(args.cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
