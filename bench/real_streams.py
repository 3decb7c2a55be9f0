"""Prediction streams of real features: rows drawn from datasets shipped inside packages (no download),
shifted by re-weighting the rows (used by bench/drift_rules.py and bench/detection.py).

The population of a stream is the dataset's rows, drawn with replacement: the reference and the stream
come from the same finite set of values, so every tie, skew and heavy tail of the real features stays
(a binary ``sex``, Shuttle's integer sensors with two thirds of the rows at one value, pixels with 17
levels), and a stationary stream is exactly stationary. A shift re-weights the rows by exponential
tilting: row i is drawn with probability proportional to exp(theta * s_i), s a standardised score of the
row (mean 0, sd 1 over the rows). Three scores, three kinds of real drift:

* ``feature``: the normal score of one feature's mid-rank (ties share one score). On a normal feature
  tilting moves the mean by theta sd, so theta = 0.5 is the size of the normal streams' +0.5 sd; on a
  real one it moves the feature by about as much in rank terms, whatever its scale or tail, and every
  feature correlated with it as well (a real covariate shift does too);
* ``class mix``: the target, the population changing (more malignant tumours, more anomalies, more of
  one digit; for diabetes, the normal score of the disease progression): every feature moves a little,
  mostly in shape (a mixture's proportions), none by much;
* ``spread``: the distance of the feature's normal score from its centre, |score|: its spread grows and
  its location stays (a change of shape, which the rank test does not see).

The tilt theta of every prediction: stationary 0 throughout; gradual rising linearly from 0 at ``change``
to ``size`` at ``change + ramp``, then held; abrupt ``size`` from ``change`` on.

    .venv/bin/python bench/real_streams.py     # the datasets: rows, features, ties and skew
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri
from scipy.stats import rankdata, skew

BLOCK = 50  # predictions drawn with one theta: a ramp over 5,000 moves in 100 steps


@dataclass(frozen=True)
class RealData:
    name: str
    source: str
    features: tuple[str, ...]
    values: np.ndarray  # (rows, features)
    tilted: str  # the feature whose rank the ``feature`` and ``spread`` shifts tilt
    target: np.ndarray  # the ``class mix`` shift's score before standardising

    def scores(self, kind: str = "feature") -> np.ndarray:
        """Each row's score for the shift ``kind``, mean 0 and sd 1 over the rows."""
        x = self.values[:, self.features.index(self.tilted)]
        s = {"feature": _normal_scores, "spread": lambda v: np.abs(_normal_scores(v))}.get(kind)
        s = self.target if s is None else s(x)
        return (s - s.mean()) / s.std()


SHIFTS = ("feature", "class mix", "spread")


def _normal_scores(x: np.ndarray) -> np.ndarray:
    return ndtri((rankdata(x) - 0.5) / x.size)


def _sklearn(loader: str, columns: slice | list[int] | None = None) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    from sklearn import datasets

    bunch = getattr(datasets, loader)()  # bundled with scikit-learn: read from the package, never downloaded
    names = [str(n) for n in bunch.feature_names]
    chosen = list(range(len(names)) if columns is None else np.arange(len(names))[columns])
    return tuple(names[j] for j in chosen), np.asarray(bunch.data, float)[:, chosen], _class_mix(bunch.target)


def _class_mix(target: np.ndarray) -> np.ndarray:
    """A classifier's target: the indicator of its second most frequent class (a minority growing); a
    regression target: its normal score (the population's outcome moving up)."""
    if np.issubdtype(target.dtype, np.floating):
        return _normal_scores(target)
    labels, counts = np.unique(target, return_counts=True)
    return (target == labels[np.argsort(-counts, kind="stable")[1]]).astype(float)


def _shuttle() -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    from river import datasets

    pairs = list(datasets.Shuttle())  # shuttle.csv.gz ships inside river's package
    names = tuple(pairs[0][0])
    values = np.array([[float(x[k]) for k in names] for x, _ in pairs])
    return names, values, _class_mix(np.array([int(y) for _, y in pairs]))


# Digits: the 16 central pixels (4 x 4 of the 8 x 8 image): 17 grey levels, a third to a half of the rows at
# 0 or 16; the border pixels are mostly constant.
_DIGIT_PIXELS = [8 * r + c for r in range(2, 6) for c in range(2, 6)]

# name: (loader, the tilted feature, what it is)
_DATASETS = {
    "diabetes": (
        lambda: _sklearn("load_diabetes"),
        "s4",
        "scikit-learn; a binary sex; tilted s4, a ratio: 66 values, 29 % at one; class mix: disease progression",
    ),
    "shuttle": (
        _shuttle,
        "f2",
        "river; integer sensors, skew up to 27; tilted f2: 59 % of rows at one value; class mix: anomalies 7 %",
    ),
    "breast cancer": (
        lambda: _sklearn("load_breast_cancer", slice(0, 10)),
        "mean area",
        "scikit-learn; the 10 'mean' features; tilted mean area: skew 1.6; class mix: malignant 37 %",
    ),
    "digits": (
        lambda: _sklearn("load_digits", _DIGIT_PIXELS),
        "pixel_3_3",
        "scikit-learn; 16 central pixels of 17 levels; tilted pixel_3_3: bimodal at 0 and 16; class mix: one digit",
    ),
    "wine": (
        lambda: _sklearn("load_wine"),
        "magnesium",
        "scikit-learn; 178 rows; tilted magnesium: skew 1.1; class mix: cultivar 1 (33 %)",
    ),
}
DATASETS = tuple(_DATASETS)


@functools.cache
def load(name: str) -> RealData:
    loader, tilted, source = _DATASETS[name]
    features, values, target = loader()
    keep = values.std(axis=0) > 0  # a constant column tells nothing
    features = tuple(f for f, k in zip(features, keep) if k)
    return RealData(name, source, features, values[:, keep], tilted, target)


def theta(n: int, shape: str, change: int, ramp: int, size: float) -> np.ndarray:
    """The tilt of every prediction."""
    t = np.arange(n)
    if shape == "stationary":
        return np.zeros(n)
    if shape == "abrupt":
        return np.where(t >= change, size, 0.0)
    return np.clip((t - change) / ramp, 0.0, 1.0) * size


def draw(data: RealData, thetas: np.ndarray, rng: np.random.Generator, kind: str = "feature") -> np.ndarray:
    """Rows drawn with replacement, each under its prediction's tilt (constant over blocks of BLOCK)."""
    out = np.empty((thetas.size, len(data.features)))
    cdf_for: dict[float, np.ndarray] = {}
    scores = data.scores(kind)
    for start in range(0, thetas.size, BLOCK):
        level = float(thetas[start])
        cdf = cdf_for.get(level)
        if cdf is None:
            w = np.exp(level * scores)
            cdf = cdf_for.setdefault(level, np.cumsum(w) / w.sum())
        count = min(BLOCK, thetas.size - start)
        rows = np.minimum(np.searchsorted(cdf, rng.random(count), side="right"), cdf.size - 1)
        out[start : start + count] = data.values[rows]
    return out


def reference(data: RealData, rows: int, rng: np.random.Generator) -> np.ndarray:
    """The reference sample: rows drawn uniformly (the stream before any shift)."""
    return data.values[rng.integers(0, data.values.shape[0], rows)]


def stream(
    data: RealData,
    n: int,
    seed: int,
    shape: str,
    change: int = 20_000,
    ramp: int = 10_000,
    size: float = 0.5,
    kind: str = "feature",
) -> np.ndarray:
    """``n`` predictions' features (columns in ``data.features`` order) of one seeded stream."""
    return draw(data, theta(n, shape, change, ramp, size), np.random.default_rng(seed), kind)


def shift_in_sd(data: RealData, size: float, kind: str = "feature") -> dict[str, float]:
    """How far the tilt by ``size`` moves each feature's mean, in the feature's sd (the shift's footprint)."""
    w = np.exp(size * data.scores(kind))
    w /= w.sum()
    mean, sd = data.values.mean(axis=0), data.values.std(axis=0)
    return {f: float((w @ data.values[:, j] - mean[j]) / sd[j]) for j, f in enumerate(data.features)}


def describe() -> None:
    for name in DATASETS:
        data = load(name)
        x = data.values
        top = [np.unique(x[:, j], return_counts=True)[1].max() / x.shape[0] for j in range(x.shape[1])]
        moved = shift_in_sd(data, 0.5)
        mix = np.abs(list(shift_in_sd(data, 0.5, "class mix").values()))
        print(
            f"- {name} ({data.source}): {x.shape[0]} rows, {x.shape[1]} features; distinct values per feature "
            f"{min(len(np.unique(c)) for c in x.T)}-{max(len(np.unique(c)) for c in x.T)}, largest share at one "
            f"value {max(top):.0%}, |skew| up to {np.max(np.abs(skew(x))):.1f}; tilt 0.5 on {data.tilted} moves it "
            f"{moved[data.tilted]:+.2f} sd, {sum(abs(v) > 0.1 for v in moved.values()) - 1} other features "
            f"by more than 0.1 sd; class mix 0.5 moves the features' means by {mix.min():.2f}-{mix.max():.2f} sd"
        )


if __name__ == "__main__":
    describe()
