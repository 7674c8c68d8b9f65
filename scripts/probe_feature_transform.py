#!/usr/bin/env python3
"""An element-wise transform of the MVTec embeddings before a per-class Gaussian, probed in NumPy.

    python3 scripts/probe_feature_transform.py ../shared/datasets/mvtec-embeddings-resnet18 [--test]

Candidates: t(x) = (x + eps)^p for p in {0.5, 0.25}, t(x) = log(x + eps), eps in {0.001, 0.01,
0.03, 0.1}, and none. For each, a Ledoit-Wolf Gaussian per class is fitted on 80 % of the class's
training rows (every row but every fifth, in row order) and the mean
log-likelihood per dimension of the other 20 % is printed, the transform's log-Jacobian counted,
so that every candidate is a density of the same x. The highest is the choice (docs/results.md
§2.6). With --test, and only then, the mean image AUROC of the test rows is printed for the choice
and for none, each Gaussian fitted on all training rows.
"""
import csv
import sys

import numpy as np


def ledoit_wolf(z):
    """Mean and Ledoit-Wolf covariance (shrunk toward a multiple of I) of the rows of z."""
    n, d = z.shape
    mean = z.mean(0)
    c = z - mean
    s = c.T @ c / n
    m = np.trace(s) / d
    d2 = ((s - m * np.eye(d)) ** 2).sum()
    b2 = min(sum(((np.outer(v, v) - s) ** 2).sum() for v in c) / n**2, d2)
    rho = b2 / d2 if d2 > 0 else 1.0
    return mean, (1 - rho) * s + rho * m * np.eye(d)


def log_density(z, mean, cov):
    chol = np.linalg.cholesky(cov)
    y = np.linalg.solve(chol, (z - mean).T)
    return -0.5 * (y * y).sum(0) - np.log(np.diag(chol)).sum() - 0.5 * z.shape[1] * np.log(2 * np.pi)


def transform(x, p, eps):
    """t(x) and log |det dt/dx| per row; p = 1 is none, p = 0 the logarithm."""
    if p == 1:
        return x, np.zeros(len(x))
    if p == 0:
        t = np.log(x + eps)
        return t, -t.sum(1)
    return (x + eps) ** p, (np.log(p) + (p - 1) * np.log(x + eps)).sum(1)


def auroc(scores, labels):
    """Mann-Whitney AUROC with ties counted half."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n1 = labels.sum()
    n0 = len(labels) - n1
    return (ranks[labels == 1].sum() - n1 * (n1 + 1) / 2) / (n0 * n1)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    data = sys.argv[1].rstrip("/") + "/"
    rows = list(csv.DictReader(open(data + "unified_split_seed0.csv")))
    classes = sorted({r["class"] for r in rows})
    features = {c: np.load(data + c + "_X.npy").astype(np.float64) for c in classes}
    split = {}
    for c in classes:
        mine = [r for r in rows if r["class"] == c]
        train = sorted(int(r["row"]) for r in mine if r["split"] == "train")
        held = set(train[::5])
        test = [(int(r["row"]), int(r["y"])) for r in mine if r["split"] == "test"]
        split[c] = (train, [t for t in train if t not in held], sorted(held), test)

    def held_out(p, eps):
        values = []
        for c in classes:
            _, fit, held, _ = split[c]
            t_fit, _ = transform(features[c][fit], p, eps)
            t_held, jacobian = transform(features[c][held], p, eps)
            mean, cov = ledoit_wolf(t_fit)
            values.append(np.mean(log_density(t_held, mean, cov) + jacobian) / t_held.shape[1])
        return float(np.mean(values))

    def test_auroc(p, eps):
        values = []
        for c in classes:
            train, _, _, test = split[c]
            mean, cov = ledoit_wolf(transform(features[c][train], p, eps)[0])
            rows_, labels = zip(*test)
            t_test, _ = transform(features[c][list(rows_)], p, eps)
            values.append(auroc(-log_density(t_test, mean, cov), np.array(labels)))
        return float(np.mean(values))

    candidates = [(1, 0.0)] + [(p, e) for p in (0.5, 0.25, 0) for e in (0.001, 0.01, 0.03, 0.1)]
    name = lambda p, e: "none" if p == 1 else (f"log(x + {e})" if p == 0 else f"(x + {e})^{p}")
    figures = []
    for p, e in candidates:
        figures.append(held_out(p, e))
        print(f"{name(p, e):18s} held-out log-likelihood per dimension {figures[-1]:.4f}", flush=True)
    best = candidates[int(np.argmax(figures))]
    print(f"choice: {name(*best)}")
    if "--test" in sys.argv:
        for p, e in [(1, 0.0), best]:
            print(f"{name(p, e):18s} test mean image AUROC {test_auroc(p, e):.4f}", flush=True)


if __name__ == "__main__":
    main()
