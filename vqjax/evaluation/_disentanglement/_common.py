"""Ground-truth data, the result types, input checks, sampling and the discrete information measures shared by
the disentanglement metrics (:mod:`vqjax.evaluation._disentanglement`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

Representation = Callable[[Any], Any]  # observations [n, ...] -> codes [n, L]


@dataclasses.dataclass(frozen=True)
class GroundTruthData:
    """Data with known generative factors: ``factor_sizes[k]`` values for factor k, observations
    rendered from an ``int [n, K]`` array of factor indices by ``observations``.

    The metrics use only ``factor_sizes``, ``sample_factors(n, rng)`` and ``observations(factors)``,
    so any object with these three attributes will do (e.g. a class whose ``sample_factors`` is not
    uniform); this dataclass samples each factor uniformly and independently, as disentanglement_lib's
    ``StateSpaceAtomIndex`` data sets do. Every factor needs at least two values (a constant factor
    carries no information: leave it out).
    """

    factor_sizes: Sequence[int]
    observations: Callable[[np.ndarray], Any]

    def __post_init__(self):
        object.__setattr__(self, "factor_sizes", _check_factor_sizes(self.factor_sizes))
        if not callable(self.observations):
            raise ValueError("`observations` must be callable: factor indices int [n, K] -> observations.")  # noqa: TRY004

    @property
    def num_factors(self) -> int:
        return len(self.factor_sizes)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``int64 [n, K]``: each factor uniform over ``range(factor_sizes[k])``, independently."""
        return rng.integers(0, np.asarray(self.factor_sizes), size=(n, len(self.factor_sizes)))


class BetaVAEScore(NamedTuple):
    train_accuracy: float
    eval_accuracy: float  # the score


class FactorVAEScore(NamedTuple):
    train_accuracy: float
    eval_accuracy: float  # the score
    num_active_dims: int  # latents with sqrt(Var z_j) >= threshold


class DCI(NamedTuple):
    disentanglement: float
    completeness: float
    informativeness_train: float  # mean accuracy of the per-factor classifiers on their training sample
    informativeness_test: float
    importance: np.ndarray  # R [L, K]


class ModularityExplicitness(NamedTuple):
    modularity: float
    explicitness_train: float
    explicitness_test: float


# ----------------------------------------------------------------------------------------------------
# Checks and sampling


def _check_factor_sizes(sizes) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in sizes)
    except (TypeError, ValueError):
        raise ValueError(f"`factor_sizes` must be a sequence of ints; got {sizes!r}.") from None
    if not out or any(s < 2 for s in out) or any(s != t for s, t in zip(out, sizes)):
        raise ValueError(f"`factor_sizes` must be a non-empty sequence of ints >= 2 (a factor with one "
                         f"value carries no information); got {sizes!r}.")
    return out


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}; got {value!r}.")
    return int(value)


def _check_codes(name: str, codes, n: int | None = None, num_latents: int | None = None) -> np.ndarray:
    z = np.asarray(codes, np.float64)
    if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        raise ValueError(f"`{name}` must be [n, L] with n, L >= 1; got shape {z.shape}.")
    if n is not None and z.shape[0] != n:
        raise ValueError(f"`{name}` must have {n} rows, one per row of the factors; got {z.shape[0]}.")
    if num_latents is not None and z.shape[1] != num_latents:
        raise ValueError(f"`{name}` must have L = {num_latents} columns, as the training codes; got "
                         f"{z.shape[1]}.")
    if not np.all(np.isfinite(z)):
        raise ValueError(f"`{name}` must be finite.")
    return z


def _check_factors(name: str, factors, n: int | None = None, num_factors: int | None = None) -> np.ndarray:
    y = np.asarray(factors)
    if y.ndim != 2 or y.shape[0] < 1 or y.shape[1] < 1:
        raise ValueError(f"`{name}` must be [n, K] with n, K >= 1; got shape {y.shape}.")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"`{name}` must have {n} rows, one per row of the codes; got {y.shape[0]}.")
    if num_factors is not None and y.shape[1] != num_factors:
        raise ValueError(f"`{name}` must have K = {num_factors} columns, as the training factors; got "
                         f"{y.shape[1]}.")
    integral = np.issubdtype(y.dtype, np.integer) or y.dtype == bool
    if not integral and (not np.issubdtype(y.dtype, np.number) or not np.all(np.isfinite(y))
                         or np.any(y != np.round(y))):
        raise ValueError(f"`{name}` must hold integer factor values; got dtype {y.dtype} with "
                         f"non-integer entries.")
    return y.astype(np.int64)


def _require_varying(name: str, y: np.ndarray) -> None:
    constant = [k for k in range(y.shape[1]) if np.all(y[:, k] == y[0, k])]
    if constant:
        raise ValueError(f"`{name}`: factor(s) {constant} take a single value in this sample; every factor "
                         f"must vary (use more samples, or leave a constant factor out).")


def _data_sizes(data) -> tuple[int, ...]:
    for attr in ("factor_sizes", "sample_factors", "observations"):
        if not hasattr(data, attr):
            raise ValueError(f"`data` must have `factor_sizes`, `sample_factors(n, rng)` and "
                             f"`observations(factors)` (see GroundTruthData); it has no `{attr}`.")
    return _check_factor_sizes(data.factor_sizes)


def _sample(data, sizes: tuple[int, ...], n: int, rng: np.random.Generator) -> np.ndarray:
    y = np.asarray(data.sample_factors(n, rng))
    if y.shape != (n, len(sizes)) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"`data.sample_factors({n}, rng)` must return ints [{n}, {len(sizes)}]; got "
                         f"{y.dtype} {y.shape}.")
    if np.any(y < 0) or np.any(y >= np.asarray(sizes)):
        raise ValueError(f"`data.sample_factors` returned values outside [0, factor_sizes) = {sizes}.")
    return y.astype(np.int64)


def _encode_chunks(data, representation: Representation, factors: np.ndarray,
                   call_size: int) -> Iterator[np.ndarray]:
    """Codes ``float64 [m, L]`` of consecutive chunks of ``call_size`` rows of ``factors`` (fewer in a
    single call when everything fits). The last chunk is padded by repeating its last row, so that
    ``representation`` always sees the same batch size (one compilation of a jitted encoder)."""
    n = factors.shape[0]
    size = min(call_size, n)
    num_latents = None
    for start in range(0, n, size):
        chunk = factors[start:start + size]
        m = chunk.shape[0]
        if m < size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - m, axis=0)])
        z = np.asarray(representation(data.observations(chunk)), np.float64)
        if z.ndim != 2 or z.shape[0] != size or (num_latents is not None and z.shape[1] != num_latents):
            raise ValueError(f"`representation` must map {size} observations to codes [{size}, L] (the same "
                             f"L every call); got shape {z.shape}.")
        if not np.all(np.isfinite(z)):
            raise ValueError("`representation` returned non-finite codes.")
        num_latents = z.shape[1]
        yield z[:m]


def _encode(data, representation: Representation, factors: np.ndarray, call_size: int) -> np.ndarray:
    return np.concatenate(list(_encode_chunks(data, representation, factors, call_size)))


def _sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("the disentanglement metrics need scikit-learn (pip install 'scikit-learn>=1.5')") from e


# ----------------------------------------------------------------------------------------------------
# Discretisation and discrete information


def histogram_discretize(codes, num_bins: int = 20) -> np.ndarray:
    """Each column of ``codes [n, L]`` replaced by its bin in ``num_bins`` equal-width bins over the
    column's range: ``int64`` in ``1..num_bins`` (disentanglement_lib ``utils._histogram_discretize``:
    ``np.digitize(z, np.histogram(z, num_bins)[1][:-1])``)."""
    z = _check_codes("codes", codes)
    num_bins = _check_int("num_bins", num_bins)
    out = np.empty(z.shape, np.int64)
    for j in range(z.shape[1]):
        edges = np.histogram(z[:, j], num_bins)[1][:-1]
        out[:, j] = np.digitize(z[:, j], edges)
    return out


def _dense_labels(column: np.ndarray) -> tuple[np.ndarray, int]:
    values, inverse = np.unique(column, return_inverse=True)
    return inverse.reshape(-1), len(values)


def _mutual_information(a: np.ndarray, ka: int, b: np.ndarray, kb: int) -> float:
    joint = np.bincount(a * kb + b, minlength=ka * kb).reshape(ka, kb) / a.shape[0]
    outer = np.outer(joint.sum(1), joint.sum(0))
    nz = joint > 0
    return max(float(np.sum(joint[nz] * (np.log(joint[nz]) - np.log(outer[nz])))), 0.0)


def discrete_mutual_information(discrete_codes, factors) -> np.ndarray:
    """``float64 [L, K]``: the plug-in mutual information (nats) ``I(c_j; y_k) = Σ p(c, y) log
    p(c, y) / (p(c) p(y))`` between the columns of ``discrete_codes [n, L]`` and ``factors [n, K]``
    (any integer labels; disentanglement_lib ``utils.discrete_mutual_info``, i.e. scikit-learn's
    ``mutual_info_score``)."""
    c = _check_factors("discrete_codes", discrete_codes)
    y = _check_factors("factors", factors, n=c.shape[0])
    cs = [_dense_labels(c[:, j]) for j in range(c.shape[1])]
    ys = [_dense_labels(y[:, k]) for k in range(y.shape[1])]
    return np.array([[_mutual_information(a, ka, b, kb) for b, kb in ys] for a, ka in cs])


def discrete_entropy(factors) -> np.ndarray:
    """``float64 [K]``: the plug-in entropy (nats) ``H(y_k) = −Σ p(y) log p(y)`` of each column of
    ``factors [n, K]`` (disentanglement_lib ``utils.discrete_entropy``)."""
    y = _check_factors("factors", factors)
    out = np.empty(y.shape[1])
    for k in range(y.shape[1]):
        p = np.unique(y[:, k], return_counts=True)[1] / y.shape[0]
        out[k] = max(float(-np.sum(p * np.log(p))), 0.0)
    return out


# ----------------------------------------------------------------------------------------------------
# β-VAE score (Higgins et al., 2017)


def _check_split(codes_train, factors_train, codes_test, factors_test):
    """``(z, y, z_test, y_test)`` as arrays: latents ``[n, L]`` and factors ``[n, K]`` of a train and a test
    split of matching widths, every training factor taking at least two values; ValueErrors name the argument."""
    z = _check_codes("codes_train", codes_train)
    y = _check_factors("factors_train", factors_train, n=z.shape[0])
    zt = _check_codes("codes_test", codes_test, num_latents=z.shape[1])
    yt = _check_factors("factors_test", factors_test, n=zt.shape[0], num_factors=y.shape[1])
    _require_varying("factors_train", y)
    return z, y, zt, yt
