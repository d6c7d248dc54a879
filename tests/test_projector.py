"""The SVD projector artifact and the `complora projector` verb."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from complora.adapters import AdapterConfig, inject
from complora.adapters.sites import adapted_matrices
from complora.fingerprint import weights_sha256
from complora.models import load_clip
from complora.subspace import ProjectorError, build_projector, load_projector, save_projector, stats_path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "complora.cli", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_bases_are_the_top_singular_vectors(make_tiny):
    model = make_tiny()
    config = AdapterConfig(method="complora", k=6, targets=["q", "o"])
    projector = build_projector(model, config)
    assert projector.k_max == 6
    weights = dict(adapted_matrices(model, config))
    assert sorted(projector.bases) == sorted(weights)
    for name, weight in weights.items():
        basis = projector.bases[name]
        assert basis.u.shape == (weight.shape[0], 6) and basis.v.shape == (weight.shape[1], 6)
        assert torch.allclose(basis.u.T @ basis.u, torch.eye(6), atol=1e-6)
        assert torch.allclose(basis.v.T @ basis.v, torch.eye(6), atol=1e-6)
        assert torch.allclose(basis.spectrum, torch.linalg.svdvals(weight.detach()), rtol=1e-5, atol=1e-6)
        # W V_k = U_k S_k: the pairs belong together.
        assert torch.allclose(weight.detach() @ basis.v, basis.u * basis.spectrum[:6], atol=1e-5)


def test_default_k_max_covers_energy_k(make_tiny):
    model = make_tiny()
    projector = build_projector(model, AdapterConfig(method="complora", k="energy:0.6"))
    needed = [projector.resolve(name, "energy:0.6") for name in projector.bases]
    assert projector.k_max == max(needed) and min(needed) > 0


def test_save_load_round_trip_and_stats_sidecar(make_tiny, tmp_path):
    model = make_tiny()
    projector = build_projector(model, AdapterConfig(method="complora", k=8))
    path = tmp_path / "tiny.safetensors"
    save_projector(projector, path, report_ks=[0, 4, 8, "energy:0.5"])
    loaded = load_projector(path)
    assert loaded.sha256 == projector.sha256 and loaded.k_max == 8
    assert loaded.weights_sha256 == weights_sha256(model)
    stats = json.loads(stats_path(path).read_text())
    assert stats["weights_sha256"] == weights_sha256(model) and stats["projector_sha256"] == projector.sha256
    entry = stats["matrices"]["visual.transformer.resblocks.0.attn.q"]
    assert entry["per_k"]["0"] == {"k": 0, "energy": 0.0, "gap": None}
    energies = [entry["per_k"][str(k)]["energy"] for k in (4, 8)]
    assert 0 < energies[0] < energies[1] < 1
    spectrum = projector.bases["visual.transformer.resblocks.0.attn.q"].spectrum
    assert entry["per_k"]["4"]["gap"] == pytest.approx(float(spectrum[3] / spectrum[4]), rel=1e-5)
    assert entry["per_k"]["energy:0.5"]["energy"] >= 0.5


def test_load_refuses_corrupt_or_foreign_files(make_tiny, tmp_path):
    projector = build_projector(make_tiny(), AdapterConfig(method="complora", k=2))
    path = tmp_path / "p.safetensors"
    save_projector(projector, path)
    data = bytearray(path.read_bytes())
    data[-8:] = b"\x00" * 8
    path.write_bytes(bytes(data))
    with pytest.raises(ProjectorError, match="does not match its recorded hash"):
        load_projector(path)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ProjectorError, match="not a readable safetensors file"):
        load_projector(path)
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(ProjectorError, match="is not a complora projector"):
        load_projector(path)
    with pytest.raises(ProjectorError, match="does not exist"):
        load_projector(tmp_path / "missing.safetensors")


def test_cli_builds_a_projector_that_inject_accepts(tiny_config_path, tmp_path):
    out = tmp_path / "proj" / "tiny.safetensors"
    args = ["projector", "--model", str(tiny_config_path), "--pretrained", "none", "--k-max", "6", "--out", str(out)]
    result = run_cli(*args, "--k", "2", "--k", "energy:0.9")
    assert result.returncode == 0, result.stderr
    stats = json.loads(stats_path(out).read_text())
    assert stats["k_max"] == 6 and stats["build_seconds"] > 0 and stats["peak_memory_mib"] > 0
    assert set(stats["matrices"]["transformer.resblocks.2.attn.v"]["per_k"]) == {"2", "energy:0.9"}
    assert len(stats["matrices"]) == (2 + 3) * 3

    model = load_clip(str(tiny_config_path), "none", seed=0)
    projector = load_projector(out)
    assert len(inject(model, AdapterConfig(method="complora", k=6), projector)) == 15

    again = tmp_path / "again.safetensors"
    assert run_cli(*args[:-1], str(again)).returncode == 0
    assert again.read_bytes() == out.read_bytes(), "same model and seed give a byte-identical projector"


def test_cli_accepts_a_local_checkpoint(tiny_config_path, tmp_path):
    model = load_clip(str(tiny_config_path), "none", seed=5)
    checkpoint = tmp_path / "weights.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, str(checkpoint))
    out = tmp_path / "p.safetensors"
    result = run_cli(
        "projector",
        "--model",
        str(tiny_config_path),
        "--pretrained",
        str(checkpoint),
        "--k-max",
        "2",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert load_projector(out).weights_sha256 == weights_sha256(model)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"--out": "p.pt"}, "must end in .safetensors"),
        ({"--pretrained": "missing.pt"}, "pass a local checkpoint file with --pretrained PATH"),
        ({"--k-max": "999"}, "k_max=999 must lie in"),
        ({"--model": "ViT-Z-99"}, "is not an open_clip architecture"),
        ({"--k-max": "-1"}, "--k-max -1: must be 0 or more"),
        ({"--k": "999"}, "k: 999 directions asked for a matrix of rank at most"),
        pytest.param(
            {"--device": "cuda"},
            "no CUDA GPU is visible",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible"),
        ),
    ],
)
def test_cli_errors_are_one_clear_line_and_leave_no_output(tiny_config_path, tmp_path, overrides, message):
    options = {"--model": str(tiny_config_path), "--pretrained": "none", "--k-max": "2", "--out": "p.safetensors"}
    options.update(overrides)
    options["--out"] = str(tmp_path / options["--out"])
    result = run_cli("projector", *[item for pair in options.items() for item in pair])
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []
