"""Conformance with the reference First Order Motion Model: every array of golden.npz
(fp32, CPU, atol 1e-4, rtol 0, as the fixture README recommends)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avatarcam.models.fomm import load_fomm, movement_scale, normalize_kp

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "fomm"
ATOL = 1e-4
GENERATOR_OUTPUTS = ("prediction", "occlusion_map", "mask", "sparse_deformed", "deformed", "deformation")

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"FOMM fixtures not found at {FIXTURES}")


def assert_close(actual: torch.Tensor | np.ndarray | float, name: str, golden) -> None:
    expected = np.asarray(golden[name])
    got = actual.detach().cpu().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    assert got.shape == expected.shape, f"{name}: shape {got.shape} != {expected.shape}"
    err = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64)))) if got.size else 0.0
    assert err <= ATOL, f"{name}: max |diff| = {err:.3g} > {ATOL}"


@pytest.fixture(scope="module")
def golden():
    return np.load(FIXTURES / "golden.npz")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_fomm(FIXTURES / "tiny.pth.tar", FIXTURES / "tiny.yaml", device="cpu")


def _t(golden, name: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(golden[name]))


@pytest.fixture(scope="module")
def keypoints(model, golden):
    with torch.inference_mode():
        kp_source = model.kp_detector(_t(golden, "source"))
        kp_driving = [model.kp_detector(_t(golden, "driving")[t : t + 1]) for t in range(golden["driving"].shape[0])]
    return kp_source, kp_driving


def test_keypoint_detector(model, golden, keypoints) -> None:
    kp_source, kp_driving = keypoints
    assert set(kp_source) == {"value", "jacobian"}
    assert_close(kp_source["value"], "kp_source_value", golden)
    assert_close(kp_source["jacobian"], "kp_source_jacobian", golden)
    assert_close(torch.stack([kp["value"] for kp in kp_driving]), "kp_driving_value", golden)
    assert_close(torch.stack([kp["jacobian"] for kp in kp_driving]), "kp_driving_jacobian", golden)


def test_keypoint_detector_intermediates(model, golden) -> None:
    captured: dict[str, torch.Tensor] = {}
    det = model.kp_detector

    def keep(name):
        return lambda module, args, output: captured.__setitem__(name, output)

    hooks = [
        det.down.register_forward_hook(keep("down")),
        det.predictor.register_forward_hook(keep("predictor")),
        det.kp.register_forward_hook(keep("logits")),
        det.jacobian.register_forward_hook(keep("jacobian_map")),
    ]
    try:
        with torch.inference_mode():
            out = det(_t(golden, "source"), with_heatmap=True)
    finally:
        for h in hooks:
            h.remove()
    assert_close(captured["down"], "dbg__kp_source_down", golden)
    assert_close(captured["predictor"], "dbg__kp_source_predictor_out", golden)
    assert_close(captured["logits"], "dbg__kp_source_logits", golden)
    assert_close(out["heatmap"], "dbg__kp_source_heatmap", golden)
    assert_close(captured["jacobian_map"], "dbg__kp_source_jacobian_map", golden)


def test_source_only_intermediates(model, golden) -> None:
    with torch.inference_mode():
        cache = model.generator.encode_source(_t(golden, "source"))
    assert_close(cache.motion_source, "dbg__dm_source_down", golden)
    assert_close(cache.features, "dbg__gen_source_encoded", golden)


def _run_mode(model, golden, keypoints, mode: str, flags: dict) -> dict[str, list[torch.Tensor]]:
    """Per frame: normalize_kp, the generator (plain forward) and hooked intermediates."""
    kp_source, kp_driving = keypoints
    gen = model.generator
    results: dict[str, list[torch.Tensor]] = {}
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        gen.dense_motion_network.register_forward_hook(lambda m, a, out: captured.__setitem__("dm", out)),
        gen.bottleneck.register_forward_pre_hook(lambda m, args: captured.__setitem__("bottleneck_in", args[0])),
    ]
    try:
        with torch.inference_mode():
            for kd in kp_driving:
                kn = normalize_kp(kp_source=kp_source, kp_driving=kd, kp_driving_initial=kp_driving[0], **flags)
                out = gen(_t(golden, "source"), kp_source=kp_source, kp_driving=kn)
                h, w = captured["dm"]["mask"].shape[2:]
                items = {
                    "kp_norm_value": kn["value"],
                    "kp_norm_jacobian": kn["jacobian"],
                    **{name: out[name] for name in GENERATOR_OUTPUTS},
                    "hooked_deformation": captured["dm"]["deformation"],
                    "dbg__bottleneck_in": captured["bottleneck_in"],
                    "dbg__dm_heatmap_repr": gen.dense_motion_network.heatmap_representation(h, w, kn, kp_source),
                    "dbg__dm_sparse_motion": gen.dense_motion_network.sparse_motions(h, w, kn, kp_source),
                }
                for name, value in items.items():
                    results.setdefault(name, []).append(value.clone())
    finally:
        for hook in hooks:
            hook.remove()
    return results


@pytest.mark.parametrize("mode", ["rel_adapt", "rel", "abs"])
def test_generator_per_mode(model, golden, keypoints, mode: str) -> None:
    flags = json.loads(str(golden["modes_json"]))[mode]
    results = _run_mode(model, golden, keypoints, mode, flags)
    for name in ("kp_norm_value", "kp_norm_jacobian", *GENERATOR_OUTPUTS):
        assert_close(torch.stack(results[name]), f"{mode}__{name}", golden)
    # The deformation the generator returns is the one its dense-motion network produced.
    assert_close(torch.stack(results["hooked_deformation"]), f"{mode}__deformation", golden)
    if mode == "rel_adapt":
        for name in ("dbg__bottleneck_in", "dbg__dm_heatmap_repr", "dbg__dm_sparse_motion"):
            assert_close(torch.stack(results[name]), f"{mode}__{name}", golden)
        kp_source, kp_driving = keypoints
        assert_close(movement_scale(kp_source, kp_driving[0]), "rel_adapt__adapt_movement_scale", golden)


def test_batched_call(model, golden) -> None:
    """B = 2 in one call; the adapt scale comes from batch element 0 and applies to both."""
    with torch.inference_mode():
        ks = model.kp_detector(_t(golden, "batch__source"))
        kd = model.kp_detector(_t(golden, "batch__driving"))
        kd0 = model.kp_detector(_t(golden, "batch__driving_initial"))
        kn = normalize_kp(
            ks, kd, kd0, adapt_movement_scale=True, use_relative_movement=True, use_relative_jacobian=True
        )
        out = model.generator(_t(golden, "batch__source"), kp_source=ks, kp_driving=kn)
    for prefix, kp in (("kp_source", ks), ("kp_driving", kd), ("kp_driving_initial", kd0), ("kp_norm", kn)):
        assert_close(kp["value"], f"batch__{prefix}_value", golden)
        assert_close(kp["jacobian"], f"batch__{prefix}_jacobian", golden)
    for name in GENERATOR_OUTPUTS:
        assert_close(out[name], f"batch__{name}", golden)


def test_every_golden_array_is_covered(golden) -> None:
    """Guard: a new array in golden.npz must get a comparison here."""
    covered = {"source", "driving", "modes_json", "kp_source_value", "kp_source_jacobian", "kp_driving_value",
               "kp_driving_jacobian", "rel_adapt__adapt_movement_scale"}  # fmt: skip
    covered |= {f"dbg__{n}" for n in ("kp_source_down", "kp_source_predictor_out", "kp_source_logits",
                                       "kp_source_heatmap", "kp_source_jacobian_map", "dm_source_down",
                                       "gen_source_encoded")}  # fmt: skip
    for mode in ("rel_adapt", "rel", "abs"):
        covered |= {f"{mode}__{n}" for n in ("kp_norm_value", "kp_norm_jacobian", *GENERATOR_OUTPUTS)}
    covered |= {f"rel_adapt__dbg__{n}" for n in ("bottleneck_in", "dm_heatmap_repr", "dm_sparse_motion")}
    covered |= {f"batch__{n}" for n in ("source", "driving", "driving_initial", *GENERATOR_OUTPUTS)}
    covered |= {f"batch__{p}_{q}" for p in ("kp_source", "kp_driving", "kp_driving_initial", "kp_norm")
                for q in ("value", "jacobian")}  # fmt: skip
    assert set(golden.files) == covered
