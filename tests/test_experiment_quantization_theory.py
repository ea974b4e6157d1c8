"""experiments.quantization_theory: a tiny run in-process writes its files and its numbers are right."""

import json
import math

import jax.numpy as jnp
import pytest

from experiments import quantization_theory


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    c = quantization_theory.get_config()
    c.table.levels = (1, 2, 4)
    c.dp.update(num_samples=3000, levels=(4,))
    c.vq.update(train_samples=4000, test_samples=4000, bits_per_dim=(1,), restarts=2, max_iter=50)
    c.plots.update(levels=4, voronoi_codes=4, grid=80, points=500)  # reuse the table's and the VQ's fits
    workdir = tmp_path_factory.mktemp("quantization_theory")
    return quantization_theory.run(c, str(workdir)), workdir


def test_writes_tables_json_and_pictures(tiny_run):
    workdir = tiny_run[1]
    for name in ("density_levels.png", "voronoi.png"):
        assert (workdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert json.loads((workdir / "results.json").read_text())["scalar"]["Gaussian"][1]["N"] == 2
    tables = (workdir / "tables.md").read_text()
    assert "| 2 | 1 | 0.36338 | 4.3964 | 0.36338 |" in tables  # Max (1960): N = 2, D = 0.3634
    assert "upper bound" in tables and "space-filling" in tables
    assert jnp.zeros(1).dtype == jnp.float32, "the run leaked jax_enable_x64"


def test_scalar_rows_obey_the_theory(tiny_run):
    scalar = tiny_run[0]["scalar"]
    g = {r["N"]: r for r in scalar["Gaussian"]}
    assert g[1]["lloyd_max"] == pytest.approx(1.0) and g[1]["entropy"] == 0.0
    assert g[2]["lloyd_max"] == pytest.approx(1 - 2 / math.pi, rel=1e-12)  # levels ±√(2/π)
    assert g[4]["lloyd_max"] == pytest.approx(0.11748, abs=1e-5)
    assert g[4]["uniform"] == pytest.approx(0.11885, abs=1e-5)
    assert {r["N"]: r["lloyd_max"] for r in scalar["Laplace"]}[2] == pytest.approx(0.5, rel=1e-12)
    for name, rows in scalar.items():
        for r in rows:
            assert r["lloyd_max"] <= r["uniform"] * (1 + 1e-12) <= r["panter_dite"], (name, r["N"])
            assert r["snr_db"] == pytest.approx(-10 * math.log10(r["lloyd_max"]), abs=1e-9)
            assert r["entropy"] <= r["rate"] + 1e-12
            if name == "Gaussian":  # no quantizer beats Shannon's bound
                assert r["lloyd_max"] >= r["gaussian_dr"]


def test_dp_is_never_worse_than_lloyd(tiny_run):
    for r in tiny_run[0]["dp_vs_lloyd"]:
        assert 0 < r["dp"] <= r["lloyd"] * (1 + 1e-12)
        assert r["rel_gap"] >= -1e-12 and r["dp_seconds"] > 0


def test_vector_quantizer_gains(tiny_run):
    vq = tiny_run[0]["vq"]
    (iid,), (corr,) = vq["iid"]["rows"], vq["rho=0.9"]["rows"]
    assert iid["K"] == 4 and iid["levels_per_dim"] == 2
    assert iid["gain_db"] > -0.2  # at 1 bit/dim the 2-D optimum is the (rotated) square: no gain
    assert corr["gain_db"] > 2.5  # memory: four codes along the principal axis
    for r in (iid, corr):
        assert r["vq_mse"] >= r["shannon_dr"] and r["product_mse"] >= r["shannon_dr"]
    assert vq["rho=0.9"]["memory_db"] == pytest.approx(3.61, abs=0.01)
    assert tiny_run[0]["advantages_db"]["space_filling"] == pytest.approx(0.17, abs=0.005)
