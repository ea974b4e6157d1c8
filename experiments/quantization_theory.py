"""Quantization theory, measured: Lloyd-Max tables, the DP optimum, and the vector quantizer's gains.

    python -m experiments.quantization_theory                          # ~1.5 min on 2 CPU cores
    python -m experiments.quantization_theory --config.vq.train_samples=1000000 --workdir=runs/qt

1. Scalar quantizers of the unit Gaussian and the unit-variance Laplace density (float64): Lloyd-Max
   (Lloyd 1957; Max 1960) beside the best uniform quantizer, the Panter-Dite approximation and
   Shannon's D(R) = 2^{-2R} at R = log2 N.
2. On samples: the exact optimum by dynamic programming (Sharma 1978; Wang & Song 2011) beside
   Lloyd's algorithm (1-D k-means) on the same samples.
3. The advantages of vector quantization (Gray & Lookabaugh 1989): a 2-D generalized Lloyd
   quantizer against the product of two scalar Lloyd-Max quantizers at the same bits per dimension,
   on i.i.d. Gaussian pairs (space-filling + shape) and correlated ones (+ memory).

Output in the workdir: ``tables.md``, ``results.json``, ``density_levels.png``, ``voronoi.png``.
"""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments import _program
from vqjax import quantization as q
from vqjax import training
from vqjax.quantizers import nearest_code

# Normalised second moments of the square and the hexagonal cell (Conway & Sloane, ch. 2 and 21).
G_SQUARE, G_HEXAGON = 1 / 12, 5 / (36 * math.sqrt(3))


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.threads = 2  # compile the scalar quantizers (one XLA program per N) in parallel
    c.table = ml_collections.ConfigDict({"levels": (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)})
    c.dp = ml_collections.ConfigDict({"num_samples": 100_000, "levels": (2, 4, 8, 16, 32)})
    c.vq = ml_collections.ConfigDict({
        "train_samples": 100_000, "test_samples": 100_000, "bits_per_dim": (1, 2, 3), "rho": 0.9,
        "restarts": 3, "max_iter": 300, "tol": 1e-6,  # k-means++ starts; the best training distortion wins
    })
    c.plots = ml_collections.ConfigDict({"levels": 8, "voronoi_codes": 16, "grid": 600, "points": 20_000})
    return c


# Every field of get_config().
CONFIG_RULES = {
    "seed": training.integer(min=0),
    "threads": training.integer(min=1),
    "table.levels": training.int_sequence(min=1),  # N of the scalar tables
    "dp.num_samples": training.integer(min=1),
    "dp.levels": training.int_sequence(min=1),
    "vq.train_samples": training.integer(min=1),
    "vq.test_samples": training.integer(min=1),
    "vq.bits_per_dim": training.int_sequence(min=1, max=15),  # K = 4^b codes: 4^15 fits int32 indices
    "vq.rho": training.number(min=-1, max=1, min_open=True, max_open=True),  # a correlation
    "vq.restarts": training.integer(min=1),
    "vq.max_iter": training.integer(min=0),
    "vq.tol": training.number(min=0),
    "plots.levels": training.integer(min=1),
    "plots.voronoi_codes": training.integer(min=1),
    "plots.grid": training.integer(min=2),
    "plots.points": training.integer(min=1),
}


def check_sizes(config, where: str = "--config") -> list[str]:
    """Enough samples for every quantizer: N levels need N samples, K codes K training pairs."""
    out, flag = [], lambda p: training.flag(p, where)
    if max(config.dp.levels) > config.dp.num_samples:
        out.append(f"{flag('dp.num_samples')} must be >= the largest of {flag('dp.levels')} "
                   f"({max(config.dp.levels)}); got {config.dp.num_samples}.")
    codes = max(max(4**b for b in config.vq.bits_per_dim), config.plots.voronoi_codes)
    if codes > config.vq.train_samples:
        out.append(f"{flag('vq.train_samples')} must be >= the largest codebook, {codes} codes (4^"
                   f"{flag('vq.bits_per_dim')} and {flag('plots.voronoi_codes')}); got {config.vq.train_samples}.")
    return out


def check_config(config: ml_collections.ConfigDict, where: str = "--config") -> None:
    """Every value of ``config`` (:data:`CONFIG_RULES`, :func:`check_sizes`): a ValueError naming each bad flag."""
    training.validate(config, CONFIG_RULES, where=where, extra=(check_sizes,))


def _db(ratio) -> float:
    return float(10 * np.log10(ratio))


def _is_number(v) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def _markdown(title: str, header: list[str], rows: list[list], note: str = "") -> str:
    """A Markdown table: floats to 5 significant digits; text columns left-aligned, numbers right."""
    # Round to 12 digits first, so that values one ulp apart (2^-8 computed two ways) print alike.
    fmt = lambda v: f"{float(f'{v:.12g}'):.5g}" if isinstance(v, float) else str(v)
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |",
             "|" + "".join("---:|" if _is_number(v) else ":---|" for v in rows[0])]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines + ([""] + [note] if note else [])) + "\n"


# ---------------------------------------------------------------------------- 1. scalar tables

# One compiled program per N: called eagerly, cell_probabilities compiles each of its ops anew for
# every new N (about 2 s per N on a busy 2-core machine).
_output_entropy = jax.jit(lambda d, t: q.output_entropy(q.cell_probabilities(d, t)))


def scalar_row(name: str, density: q.Density, n: int) -> dict:
    """Lloyd-Max, best uniform, Panter-Dite, D(R) and output entropy for N = n levels, in float64."""
    with jax.enable_x64(True):  # per call: the table's rows run on worker threads
        lm = q.lloyd_max(density, n)
        return {
            "density": name, "N": n, "rate": math.log2(n), "lloyd_max": float(lm.mse),
            "snr_db": float(q.snr_db(lm.mse, variance=density.variance)),
            "uniform": float(q.uniform_quantizer(density, n).mse),
            "panter_dite": float(q.panter_dite_mse(density, n)),
            "gaussian_dr": float(q.gaussian_distortion_rate(math.log2(n), variance=density.variance)),
            "entropy": abs(float(_output_entropy(density, lm.thresholds))),  # abs: -0.0 for N = 1
            "levels": np.asarray(lm.levels).tolist(), "thresholds": np.asarray(lm.thresholds).tolist(),
        }


def scalar_tables(densities: dict[str, q.Density], levels, *, pool: ThreadPoolExecutor) -> dict[str, list]:
    """The rows for every density and N, computed on ``pool`` (compiling one program per N dominates)."""
    jobs = [(name, d, n) for name, d in densities.items() for n in levels]
    rows = list(pool.map(lambda job: scalar_row(*job), jobs))
    return {name: [r for r in rows if r["density"] == name] for name in densities}


# ---------------------------------------------------------------------------- 2. DP vs Lloyd


def _compile_dp(x: jax.Array, n: int) -> None:
    """First calls of both sample quantizers for N = n (compilation), on a worker thread."""
    with jax.enable_x64(True):
        jax.block_until_ready((q.lloyd_1d(x, n), q.optimal_scalar_quantizer(x, n)))


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


def dp_vs_lloyd(x: jax.Array, levels, density: q.Density) -> list[dict]:
    """Lloyd and the DP optimum on the same samples, timed after :func:`_compile_dp` compiled them."""
    rows = []
    for n in levels:
        ll, ll_seconds = _timed(q.lloyd_1d, x, n)
        dp, dp_seconds = _timed(q.optimal_scalar_quantizer, x, n)
        rows.append({
            "N": n, "lloyd": float(ll.mse), "lloyd_iterations": int(ll.iterations), "dp": float(dp.mse),
            "rel_gap": float((ll.mse - dp.mse) / dp.mse), "lloyd_max_density": float(q.lloyd_max(density, n).mse),
            "lloyd_seconds": ll_seconds, "dp_seconds": dp_seconds,
        })
    return rows


# ---------------------------------------------------------------------------- 3. VQ vs scalar


def gaussian_pairs(key, n: int, rho: float) -> jax.Array:
    """``[n, 2]`` Gaussian pairs with unit variances and correlation ``rho``."""
    z = jax.random.normal(key, (n, 2))
    return jnp.stack([z[:, 0], rho * z[:, 0] + math.sqrt(1 - rho * rho) * z[:, 1]], axis=-1)


def gaussian_dr_per_dim(eigenvalues, rate_per_dim: float) -> float:
    """Shannon's D(R) per dimension of a Gaussian vector by reverse water-filling (Cover & Thomas 10.3)."""
    lam = np.sort(np.asarray(eigenvalues, np.float64))[::-1]
    total = rate_per_dim * lam.size
    for m in range(lam.size, 0, -1):  # m active components: θ = (Π λ_active)^{1/m} 2^{-2 total/m}
        theta = np.exp(np.mean(np.log(lam[:m]))) * 2.0 ** (-2 * total / m)
        if theta <= lam[m - 1]:
            return float((m * theta + lam[m:].sum()) / lam.size)
    return float(lam.mean())


def product_quantizer(x: jax.Array, levels: np.ndarray) -> jax.Array:
    """Each coordinate by the same scalar quantizer (nearest level)."""
    levels = jnp.asarray(levels, x.dtype)
    idx = jnp.searchsorted(0.5 * (levels[1:] + levels[:-1]), x)
    return levels[idx]


def fit_vq(x: jax.Array, num_codes: int, key, vq) -> jax.Array:
    """The best of ``vq.restarts`` generalized Lloyd runs from k-means++ starts (training distortion)."""
    fits = [q.generalized_lloyd(x, num_codes, key=k, init="kmeans++", max_iter=vq.max_iter, tol=vq.tol)
            for k in jax.random.split(key, vq.restarts)]
    return min(fits, key=lambda f: float(f.distortion)).codebook


def mse_per_dim(x: jax.Array, codebook: jax.Array) -> float:
    return float(jnp.mean(jnp.square(x - codebook[nearest_code(x, codebook)])))


def vq_vs_scalar(key, vq, scalar_levels) -> tuple[dict, dict]:
    """Rows per (case, bits/dim), and the fitted codebooks and data sets for the pictures."""
    results, fitted = {}, {}
    for case, rho in (("iid", 0.0), (f"rho={vq.rho:g}", vq.rho)):
        k_train, k_test, k_fit, key = jax.random.split(key, 4)
        train = gaussian_pairs(k_train, vq.train_samples, rho)
        test = gaussian_pairs(k_test, vq.test_samples, rho)
        memory_db = _db(1 / math.sqrt(1 - rho * rho))
        high_rate_db = _db(G_SQUARE / G_HEXAGON) + _db(3**1.5 / 4) + memory_db
        rows = []
        for b, kf in zip(vq.bits_per_dim, jax.random.split(k_fit, len(vq.bits_per_dim))):
            n, k = 2**b, 4**b
            product = float(jnp.mean(jnp.square(test - product_quantizer(test, scalar_levels[n]))))
            codebook = fit_vq(train, k, kf, vq)
            vq_mse = mse_per_dim(test, codebook)
            fitted[(case, k)] = codebook
            rows.append({
                "bits_per_dim": b, "K": k, "levels_per_dim": n, "product_mse": product, "vq_mse": vq_mse,
                "vq_train_mse": mse_per_dim(train, codebook), "gain_db": _db(product / vq_mse),
                "shannon_dr": gaussian_dr_per_dim([1 + rho, 1 - rho], b), "high_rate_gain_db": high_rate_db,
            })
        results[case] = {"rho": rho, "memory_db": memory_db, "rows": rows}
        fitted[(case, "test")], fitted[(case, "train")] = test, train
    return results, fitted


# ---------------------------------------------------------------------------- 4. pictures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_density_levels(path: str, panels: list[tuple[str, q.Density, dict]]) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), dpi=120, squeeze=False)
    u = np.linspace(-4, 4, 1601)
    for ax, (name, d, row) in zip(axes[0], panels):
        f = np.exp(-0.5 * u * u) / math.sqrt(2 * math.pi) if d.kind == "gaussian" else (
            np.exp(-np.abs(u) / float(d.scale)) / (2 * float(d.scale)))
        lv, th = np.asarray(row["levels"]), np.asarray(row["thresholds"])
        edges = np.concatenate([[u[0]], th, [u[-1]]])
        for j in range(len(lv)):  # alternate shading of the cells
            m = (u >= edges[j]) & (u <= edges[j + 1])
            ax.fill_between(u[m], f[m], color="#3465a4", alpha=0.10 if j % 2 else 0.22, lw=0)
        ax.plot(u, f, color="#3465a4", lw=1.5, label="density f(u)")
        ax.vlines(th, 0, f.max() * 1.05, colors="#555753", linestyles="--", lw=1,
                  label="thresholds $b_j = (a_j + a_{j+1})/2$")
        ax.plot(lv, np.zeros_like(lv), "o", color="#cc0000", ms=6, clip_on=False,
                label="levels $a_j$ (centroids)")
        ax.set_title(f"{name}: N = {row['N']}, MSE {row['lloyd_max']:.4g} ({row['snr_db']:.2f} dB), "
                     f"H = {row['entropy']:.2f} bits", fontsize=9)
        ax.set_xlabel("u")
        ax.set_xlim(u[0], u[-1])
        ax.set_ylim(0, f.max() * 1.08)
    axes[0, 0].set_ylabel("density")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Lloyd-Max quantizers (unit variance): shaded cells, levels at their centroids", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def plot_voronoi(path: str, panels: list[tuple[str, np.ndarray, np.ndarray]], *, grid: int,
                 extent: float = 3.5) -> None:
    """Voronoi cells of 2-D codebooks: nearest_code on a dense grid, boundaries where the index changes."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 4.6), dpi=120, squeeze=False)
    g = np.linspace(-extent, extent, grid, dtype=np.float32)
    xx, yy = np.meshgrid(g, g)
    for ax, (title, codebook, points) in zip(axes[0], panels):
        idx = np.asarray(nearest_code(np.stack([xx, yy], -1), codebook))
        ax.scatter(points[:, 0], points[:, 1], s=1.5, color="#729fcf", alpha=0.35, lw=0, rasterized=True)
        for k in range(codebook.shape[0]):  # each cell's edge: the 1/2 contour of its indicator
            ax.contour(xx, yy, (idx == k).astype(np.float32), levels=[0.5], colors="k", linewidths=0.9)
        ax.plot(codebook[:, 0], codebook[:, 1], "o", color="#cc0000", ms=5)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
        ax.set_aspect("equal")
        ax.set_xlabel("$u_1$")
    axes[0, 0].set_ylabel("$u_2$")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", ms=3, color="#729fcf", label="test samples"),
               Line2D([], [], ls="", marker="o", ms=5, color="#cc0000", label="codes"),
               Line2D([], [], color="k", lw=0.9, label="cell boundaries")]
    axes[0, 0].legend(handles=handles, loc="upper left", fontsize=7, framealpha=0.9)
    fig.suptitle("Voronoi cells (nearest code on a grid): convex polygons bounded by perpendicular bisectors",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------------------- the run


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Compute everything, write ``tables.md``, ``results.json`` and the PNGs; return the results."""
    check_config(config)  # every flag, before anything is computed or written
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    key = jax.random.key(config.seed)
    k_dp, k_vq = jax.random.split(key)
    md, seconds = [], {}

    def emit(text: str) -> None:
        print(text, flush=True)
        md.append(text)

    def lap(part: str) -> None:
        seconds[part] = time.perf_counter() - start - sum(seconds.values())

    with jax.enable_x64(True):  # float64 for the closed-form tables and the DP comparison
        densities = {"Gaussian": q.gaussian(), "Laplace": q.laplace()}
        x = jax.random.normal(k_dp, (config.dp.num_samples,), jnp.float64)
    # Compiling (one XLA program per N and function) takes most of the time: on `threads` threads.
    with ThreadPoolExecutor(max(1, config.threads)) as pool:
        compiling = [pool.submit(_compile_dp, x, n) for n in config.dp.levels]
        scalar = scalar_tables(densities, config.table.levels, pool=pool)
        for c in compiling:
            c.result()
    lap("compile_and_scalar_tables")

    header = ["N", "R = log2 N", "Lloyd-Max MSE", "SNR (dB)", "best uniform MSE", "Panter-Dite",
              "D(R) = 2^-2R", "H(output) bits"]
    notes = {
        "Gaussian": "D(R) is Shannon's distortion-rate function of the Gaussian source: no code of R "
                    "bits/sample does better. Panter-Dite (√3π/2)/N² is the high-resolution limit of "
                    "Lloyd-Max.",
        "Laplace": "D(R) = 2^-2R is the *Gaussian's* distortion-rate function: an upper bound on the "
                   "Laplace's (the Gaussian is the hardest source of a given variance); the Shannon lower "
                   "bound is (e/π)·2^-2R = 0.865·2^-2R. Panter-Dite for the Laplace: 4.5/N².",
    }
    for name, rows in scalar.items():
        emit(_markdown(f"Scalar quantizers of the unit-variance {name} density (float64)", header,
                       [[r["N"], r["rate"], r["lloyd_max"], r["snr_db"], r["uniform"], r["panter_dite"],
                         r["gaussian_dr"], r["entropy"]] for r in rows], notes[name]))

    with jax.enable_x64(True):
        dp = dp_vs_lloyd(x, config.dp.levels, densities["Gaussian"])
        emit(_markdown(
            f"Exact optimum (DP) vs Lloyd on the same {config.dp.num_samples:,} N(0,1) samples (float64)",
            ["N", "Lloyd MSE", "Lloyd steps", "DP MSE", "(Lloyd-DP)/DP", "Lloyd-Max (density)", "Lloyd (s)",
             "DP (s)"],
            [[r["N"], r["lloyd"], r["lloyd_iterations"], r["dp"], f"{r['rel_gap']:.2e}",
              r["lloyd_max_density"], f"{r['lloyd_seconds']:.3f}", f"{r['dp_seconds']:.3f}"] for r in dp],
            "Lloyd starts from the sample quantiles and stops at a fixed point; DP is the global optimum. "
            "Times are of compiled calls.",
        ))
        scalar_levels = {r["N"]: np.asarray(r["levels"]) for r in scalar["Gaussian"]}
        for b in config.vq.bits_per_dim:
            if 2**b not in scalar_levels:
                scalar_levels[2**b] = np.asarray(q.lloyd_max(densities["Gaussian"], 2**b).levels)

        lap("dp_vs_lloyd")

    vq, fitted = vq_vs_scalar(k_vq, config.vq, scalar_levels)
    lap("vq_vs_scalar")
    for res in vq.values():
        label = "i.i.d." if res["rho"] == 0 else f"correlation ρ = {res['rho']:g}"
        emit(_markdown(
            f"2-D VQ (generalized Lloyd) vs product of scalar Lloyd-Max, Gaussian pairs, {label} "
            f"(train {config.vq.train_samples:,}, test {config.vq.test_samples:,} fresh pairs)",
            ["bits/dim", "K (2-D)", "levels/dim", "product MSE/dim", "VQ MSE/dim", "gain (dB)", "D(R)/dim",
             "high-rate gain (dB)"],
            [[r["bits_per_dim"], r["K"], r["levels_per_dim"], r["product_mse"], r["vq_mse"],
              f"{r['gain_db']:.3f}", r["shannon_dr"], f"{r['high_rate_gain_db']:.2f}"] for r in res["rows"]],
            "D(R)/dim: Shannon's bound for the pair (reverse water-filling over the eigenvalues 1 ± ρ). "
            "High-rate gain: the sum of the advantages below, the limit as the bits grow.",
        ))
    sf, shape = _db(G_SQUARE / G_HEXAGON), _db(3**1.5 / 4)
    rho = config.vq.rho
    emit(_markdown(
        "Vector quantizer advantages in 2-D at high rate (Gray & Lookabaugh 1989)",
        ["advantage", "what it compares", "ratio", "dB"],
        [["space-filling", "square cell G = 1/12 = 0.0833 vs hexagon G = 5/(36√3) = 0.0802",
          f"{G_SQUARE / G_HEXAGON:.4f}", f"{sf:.2f}"],
         ["shape", "Gaussian ‖f‖ in 2-D vs 1-D (Zador): 3^(3/2)/4", f"{3**1.5 / 4:.4f}", f"{shape:.2f}"],
         ["memory", f"correlation ρ = {rho:g}: (1 - ρ²)^(-1/2)", f"{1 / math.sqrt(1 - rho**2):.4f}",
          f"{vq[f'rho={rho:g}']['memory_db']:.2f}"]],
        "i.i.d. pairs can gain only space-filling + shape; the product quantizer cannot use correlation, so "
        "the memory advantage adds for ρ ≠ 0. At low rate the gains are smaller than these limits.",
    ))

    # Pictures.
    n_lv = config.plots.levels
    panels = [(name, d, next((r for r in scalar[name] if r["N"] == n_lv), None) or scalar_row(name, d, n_lv))
              for name, d in densities.items()]
    plot_density_levels(os.path.join(workdir, "density_levels.png"), panels)

    kv = config.plots.voronoi_codes
    vor = []
    for case, case_rho in (("iid", 0.0), (f"rho={rho:g}", rho)):
        test = fitted[(case, "test")]
        if (case, kv) not in fitted:
            key_kv = jax.random.key(config.seed + 1)
            fitted[(case, kv)] = fit_vq(fitted[(case, "train")], kv, key_kv, config.vq)
        codebook = np.asarray(fitted[(case, kv)])
        pts = np.asarray(test[: config.plots.points])
        if case == "iid" and math.isqrt(kv) ** 2 == kv:  # the product quantizer with the same K, for contrast
            m = math.isqrt(kv)
            lv = np.asarray(q.lloyd_max(q.gaussian(), m).levels)
            prod = np.stack(np.meshgrid(lv, lv), -1).reshape(-1, 2)
            title = f"product of 2 scalar Lloyd-Max ({m}×{m}), i.i.d.\nMSE/dim {mse_per_dim(test, prod):.4f}"
            vor.append((title, prod, pts))
        label = "i.i.d." if case_rho == 0 else f"ρ = {case_rho:g}"
        vor.append((f"generalized Lloyd, K = {kv}, {label}\nMSE/dim {mse_per_dim(test, codebook):.4f}",
                    codebook, pts))
    plot_voronoi(os.path.join(workdir, "voronoi.png"), vor, grid=config.plots.grid)
    lap("pictures")
    results = {"config": config.to_dict(), "scalar": scalar, "dp_vs_lloyd": dp, "vq": vq,
                   "advantages_db": {"space_filling": sf, "shape": shape}, "seconds": seconds}
    with open(os.path.join(workdir, "tables.md"), "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    parts = ", ".join(f"{k} {v:.1f}" for k, v in seconds.items())
    print(f"{sum(seconds.values()):.1f} s ({parts}) -> {workdir}")
    return results




def main(argv):
    del argv
    _program.check_flags(check_config, _CONFIG.value)  # every flag, before anything starts
    _program.start()
    run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    # Flags are defined only when run as a program, so tests can import every experiment.
    _CONFIG = config_flags.DEFINE_config_dict("config", get_config())
    _WORKDIR = flags.DEFINE_string("workdir", "runs/quantization_theory", "Where tables and pictures go.")
    app.run(main)
