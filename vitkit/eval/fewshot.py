"""Few-shot linear evaluation (Dosovitskiy et al. 2021, section 4.1) and two baselines, on frozen features.

The paper: "Few-shot accuracies are obtained by solving a regularized least-squares regression problem that maps
the (frozen) representation of a subset of training images to {-1, 1}^K target vectors. This formulation allows
us to recover the exact solution in closed form."

Here, for k shots and each of `seeds` draws: a fixed held-out split of the training set is set aside, k examples
per class are drawn from the rest, the ridge regression (with an unpenalised bias) is solved in closed form for a
grid of regularisers, the regulariser with the best held-out accuracy is kept, and test top-1 is reported. All
functions take numpy arrays (features (N, D), integer labels (N,)).

    pm1_targets(y, classes)                                    -> (N, K) in {-1, 1}
    ridge_fit(x, y_targets, lam)                               -> (W (D, K), b (K,))
    ridge_path(x, y_targets, lambdas)                          -> [(W, b)] for every lambda, one SVD
    sample_per_class(labels, k, rng, pool, class_names)        -> indices, k per class
    fewshot_eval(train_x, train_y, test_x, test_y, shots, ...) -> dict of results
    linear_probe(train_x, train_y, test_x, test_y, ...)        -> dict (ridge on all train features, or logreg)
    knn_eval(train_x, train_y, test_x, test_y, ks)             -> dict (cosine k-NN)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import UserError

# A wide log grid of regularisers, 2^-20 ... 2^20 (one SVD serves them all, so the grid is cheap).
DEFAULT_LAMBDAS = tuple(2.0**i for i in range(-20, 21))


def _classes(labels: np.ndarray) -> np.ndarray:
    classes = np.unique(labels)
    if len(classes) < 2:
        raise UserError(f"few-shot/linear evaluation needs at least 2 classes; the data has {len(classes)}")
    return classes


def pm1_targets(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Labels -> {-1, 1}^K target vectors (+1 at the true class)."""
    t = -np.ones((len(y), len(classes)))
    t[np.arange(len(y)), np.searchsorted(classes, y)] = 1.0
    return t


def ridge_path(x: np.ndarray, t: np.ndarray, lambdas: Sequence[float]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Closed-form solutions of min_{W,b} ||x W + b - t||^2 + lam ||W||^2 for every lam (bias not penalised),
    from one SVD of the centred features: W = V diag(s / (s^2 + lam)) U^T (t - mean t), b = mean t - mean x W."""
    x, t = np.asarray(x, np.float64), np.asarray(t, np.float64)
    mx, mt = x.mean(0), t.mean(0)
    u, s, vt = np.linalg.svd(x - mx, full_matrices=False)
    uty = u.T @ (t - mt)
    out = []
    for lam in lambdas:
        w = vt.T @ ((s / (s**2 + lam))[:, None] * uty)
        out.append((w, mt - mx @ w))
    return out


def ridge_fit(x: np.ndarray, t: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    return ridge_path(x, t, [lam])[0]


def _accuracy(x, y, w, b, classes) -> float:
    return float((classes[np.argmax(x @ w + b, axis=1)] == y).mean())


def class_label(label, class_names: Sequence[str] | None = None) -> str:
    """How a message names class `label`: its dataset name where known ('dress' (label 3)), else the label."""
    i = int(label)
    if class_names is not None and 0 <= i < len(class_names) and str(class_names[i]) != str(i):
        return f"{str(class_names[i])!r} (label {i})"
    return str(i)


def sample_per_class(labels: np.ndarray, k: int, rng: np.random.Generator, pool: np.ndarray | None = None,
                     class_names: Sequence[str] | None = None) -> np.ndarray:
    """k indices of each class, drawn without replacement from `pool` (default: all). UserError if a class has
    fewer than k examples (naming it by `class_names[label]` where given)."""
    labels = np.asarray(labels)
    pool = np.arange(len(labels)) if pool is None else np.asarray(pool)
    classes = _classes(labels[pool])
    counts = {c: int((labels[pool] == c).sum()) for c in classes}
    smallest = min(counts, key=counts.get)
    if k < 1 or k > counts[smallest]:
        raise UserError(f"{k} shots per class asked, but class {class_label(smallest, class_names)} has only "
                        f"{counts[smallest]} training examples available (after the held-out split); use fewer shots")
    idx = [rng.choice(pool[labels[pool] == c], size=k, replace=False) for c in classes]
    return np.concatenate(idx)


def _holdout(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random held-out split of the training set: (pool, val)."""
    n = len(labels)
    val_size = int(min(val_size, n // 5))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def fewshot_eval(train_x, train_y, test_x, test_y, shots: Sequence[int] = (1, 5, 10, 25),
                 seeds: Sequence[int] = (0, 1, 2), val_size: int = 1000,
                 lambdas: Sequence[float] = DEFAULT_LAMBDAS, holdout_seed: int = 1234,
                 class_names: Sequence[str] | None = None) -> dict:
    """Few-shot linear evaluation. Returns {"shots": {k: {"acc": [per draw], "mean", "std", "lambda": [chosen]}},
    "val_size", "pool_size", "num_classes"}. Accuracies are fractions in [0, 1]; std is over the draws (ddof=0).
    class_names: the dataset's, indexed by label, to name a class in a message."""
    train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    classes = _classes(train_y)
    if val_size < len(classes):
        raise UserError(f"the held-out split ({val_size}) must have at least one example per class")
    pool, val = _holdout(train_y, val_size, holdout_seed)
    res = {"shots": {}, "val_size": int(len(val)), "pool_size": int(len(pool)), "num_classes": int(len(classes)),
           "seeds": list(seeds), "lambdas": [float(v) for v in lambdas]}
    for k in shots:
        accs, lams, val_accs = [], [], []
        for seed in seeds:
            idx = sample_per_class(train_y, int(k), np.random.default_rng(seed), pool, class_names)
            sols = ridge_path(train_x[idx], pm1_targets(train_y[idx], classes), lambdas)
            va = [_accuracy(train_x[val], train_y[val], w, b, classes) for w, b in sols]
            best = max(range(len(lambdas)), key=lambda i: (va[i], lambdas[i]))  # ties: the stronger regulariser
            w, b = sols[best]
            accs.append(_accuracy(test_x, test_y, w, b, classes))
            lams.append(float(lambdas[best]))
            val_accs.append(va[best])
        res["shots"][int(k)] = {"acc": accs, "mean": float(np.mean(accs)), "std": float(np.std(accs)),
                                "min": float(np.min(accs)), "max": float(np.max(accs)), "lambda": lams,
                                "val_acc": val_accs}
    return res


def linear_probe(train_x, train_y, test_x, test_y, method: str = "ridge", val_size: int = 1000,
                 lambdas: Sequence[float] = DEFAULT_LAMBDAS, holdout_seed: int = 1234) -> dict:
    """Linear probe on all training features. "ridge": the closed-form {-1,1}^K regression, regulariser chosen on
    the held-out split, fitted on the rest. "logreg": scikit-learn LogisticRegression on standardised features
    (C=1), fitted on all training features."""
    train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    classes = _classes(train_y)
    if method == "ridge":
        pool, val = _holdout(train_y, val_size, holdout_seed)
        sols = ridge_path(train_x[pool], pm1_targets(train_y[pool], classes), lambdas)
        va = [_accuracy(train_x[val], train_y[val], w, b, classes) for w, b in sols]
        best = max(range(len(lambdas)), key=lambda i: (va[i], lambdas[i]))
        w, b = sols[best]
        return {"method": "ridge", "acc": _accuracy(test_x, test_y, w, b, classes), "lambda": float(lambdas[best]),
                "val_acc": va[best], "train_size": int(len(pool))}
    if method == "logreg":
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        sc = StandardScaler().fit(train_x)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf = LogisticRegression(max_iter=1000, C=1.0).fit(sc.transform(train_x), train_y)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        return {"method": "logreg", "acc": float((clf.predict(sc.transform(test_x)) == test_y).mean()), "C": 1.0,
                "train_size": int(len(train_x)), "max_iter": 1000, "converged": converged}
    raise UserError(f"unknown linear probe method {method!r}; choose ridge or logreg")


def knn_eval(train_x, train_y, test_x, test_y, ks: Sequence[int] = (1, 10), chunk: int = 1024) -> dict:
    """k-NN classification with cosine similarity on L2-normalised features (majority vote, ties to the most
    similar neighbour's class via similarity-weighted counts). Returns {"acc": {k: accuracy}}."""
    tr = np.asarray(train_x, np.float32)
    te = np.asarray(test_x, np.float32)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    classes = _classes(train_y)
    ks = [int(k) for k in ks]
    if max(ks) > len(tr):
        raise UserError(f"k-NN with k={max(ks)} needs at least that many training features (have {len(tr)})")
    tr = tr / np.clip(np.linalg.norm(tr, axis=1, keepdims=True), 1e-12, None)
    te = te / np.clip(np.linalg.norm(te, axis=1, keepdims=True), 1e-12, None)
    ytr = np.searchsorted(classes, train_y)
    kmax = max(ks)
    correct = {k: 0 for k in ks}
    for s in range(0, len(te), chunk):
        sim = te[s:s + chunk] @ tr.T
        nn_idx = np.argpartition(-sim, kmax - 1, axis=1)[:, :kmax]
        nn_sim = np.take_along_axis(sim, nn_idx, axis=1)
        order = np.argsort(-nn_sim, axis=1)
        nn_idx, nn_sim = np.take_along_axis(nn_idx, order, 1), np.take_along_axis(nn_sim, order, 1)
        for k in ks:
            votes = np.zeros((len(nn_idx), len(classes)))
            rows = np.repeat(np.arange(len(nn_idx)), k)
            np.add.at(votes, (rows, ytr[nn_idx[:, :k]].ravel()), 1.0 + 1e-3 * nn_sim[:, :k].ravel())
            correct[k] += int((classes[votes.argmax(1)] == test_y[s:s + chunk]).sum())
    return {"acc": {k: correct[k] / len(te) for k in ks}}
