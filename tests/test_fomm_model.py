"""FOMM model structure, loading and building blocks (CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from avatarcam.errors import ConfigError, WeightsError
from avatarcam.models.fomm import FommConfig, hull_area, load_fomm, movement_scale, normalize_kp
from avatarcam.models.fomm.blocks import AntiAliasInterpolation2d, inverse_2x2, make_coordinate_grid
from avatarcam.precision import Precision, select_precision

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "fomm"
TINY_YAML = FIXTURES / "tiny.yaml"
TINY_CKPT = FIXTURES / "tiny.pth.tar"

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"FOMM fixtures not found at {FIXTURES}")


@pytest.fixture(scope="module")
def tiny():
    return load_fomm(TINY_CKPT, TINY_YAML)


@pytest.fixture(scope="module")
def golden():
    return np.load(FIXTURES / "golden.npz")


# ---- state_dict layout ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vox-256", "tiny"])
def test_state_dict_matches_manifest(name: str) -> None:
    """Every key, shape, dtype and the order of the public checkpoints' state dicts."""
    manifest = json.loads((FIXTURES / f"{name}-manifest.json").read_text())
    cfg = FommConfig.load(FIXTURES / f"{name}.yaml")
    # Meta tensors: shapes without allocating or initialising ~60M parameters.
    with torch.device("meta"):
        modules = {"kp_detector": cfg.build_kp_detector(), "generator": cfg.build_generator()}
    for module_name, module in modules.items():
        expected = manifest[module_name]
        got = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in module.state_dict().items()]
        assert got == expected["entries"], f"{name} {module_name} state_dict differs from the manifest"
        assert len(got) == expected["num_entries"]
        assert sum(p.numel() for p in module.parameters()) == expected["num_parameters"]
        assert sum(v.numel() for v in module.state_dict().values()) == expected["num_state_elements"]
        buffers = [k for k, _ in module.named_buffers()]
        assert sorted(buffers) == sorted(expected["buffer_keys"])


def test_antialias_kernel_matches_checkpoint_buffer(tiny) -> None:
    """The Gaussian we compute equals the stored buffer, so a fresh model needs no checkpoint for it."""
    state = torch.load(TINY_CKPT, map_location="cpu", weights_only=True)
    fresh = AntiAliasInterpolation2d(3, 0.25)
    assert torch.allclose(fresh.weight, state["kp_detector"]["down.weight"], atol=1e-7, rtol=0)
    assert fresh.weight.shape == (3, 1, 13, 13)


def test_strided_antialias_equals_blur_then_subsample() -> None:
    """The strided-conv shortcut reproduces pad -> depthwise blur -> keep every n-th pixel."""
    x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    for scale in (0.25, 0.5):
        aa = AntiAliasInterpolation2d(3, scale)
        pad = aa.weight.shape[-1] // 2
        step = int(1 / scale)
        slow = F.conv2d(F.pad(x, (pad, pad, pad, pad)), aa.weight, groups=3)[:, :, ::step, ::step]
        assert torch.allclose(aa(x), slow, atol=1e-6, rtol=0)


def test_coordinate_grid_convention() -> None:
    grid = make_coordinate_grid(3, 5, dtype=torch.float32, device=torch.device("cpu"))
    assert grid.shape == (3, 5, 2)
    assert grid[0, 0].tolist() == [-1.0, -1.0]
    assert grid[2, 4].tolist() == [1.0, 1.0]
    assert grid[1, 0].tolist() == [-1.0, 0.0]  # (x, y): x runs along the width
    assert grid[0, 1].tolist() == [-0.5, -1.0]


def test_inverse_2x2_matches_torch() -> None:
    m = torch.randn(4, 10, 2, 2, generator=torch.Generator().manual_seed(1)) + 2 * torch.eye(2)
    assert torch.allclose(inverse_2x2(m), torch.inverse(m), atol=1e-5, rtol=1e-5)


# ---- normalize_kp -----------------------------------------------------------------------------


def _kp(seed: int, batch: int = 1, k: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "value": torch.rand(batch, k, 2, generator=g) * 2 - 1,
        "jacobian": torch.eye(2) + 0.2 * torch.randn(batch, k, 2, 2, generator=g),
    }


def test_hull_area_and_degenerate_points() -> None:
    square = np.array([[0, 0], [2, 0], [2, 2], [0, 2], [1, 1]], dtype=np.float32)
    assert hull_area(square) == pytest.approx(4.0)
    assert hull_area(torch.from_numpy(square)) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="convex hull"):
        hull_area(np.array([[0, 0], [1, 1], [2, 2]], dtype=np.float32))


def test_normalize_kp_modes() -> None:
    ks, kd, kd0 = _kp(1), _kp(2), _kp(3)
    absolute = normalize_kp(ks, kd, kd0, adapt_movement_scale=True)
    assert absolute["value"] is kd["value"] and absolute["jacobian"] is kd["jacobian"]
    at_start = normalize_kp(kp_source=ks, kp_driving=kd0, kp_driving_initial=kd0, adapt_movement_scale=True,
                            use_relative_movement=True, use_relative_jacobian=True)  # fmt: skip
    assert torch.equal(at_start["value"], ks["value"])
    assert torch.allclose(at_start["jacobian"], ks["jacobian"], atol=1e-5)
    rel = normalize_kp(ks, kd, kd0, adapt_movement_scale=True, use_relative_movement=True)
    scale = movement_scale(ks, kd0)
    assert torch.allclose(rel["value"], (kd["value"] - kd0["value"]) * scale + ks["value"])
    assert rel["jacobian"] is kd["jacobian"]  # relative movement without relative jacobian
    expected_scale = math.sqrt(hull_area(ks["value"][0])) / math.sqrt(hull_area(kd0["value"][0]))
    assert scale == pytest.approx(expected_scale) and scale != pytest.approx(1.0)


# ---- source cache and precision ---------------------------------------------------------------


def test_source_cache_equals_plain_forward(tiny, golden) -> None:
    source = torch.from_numpy(golden["source"])
    driving = torch.from_numpy(golden["driving"][2:3])
    with torch.inference_mode():
        ks, kd = tiny.kp_detector(source), tiny.kp_detector(driving)
        plain = tiny.generator(source, kp_source=ks, kp_driving=kd)
        cache = tiny.generator.encode_source(source)
        cached = tiny.generator(kp_source=ks, kp_driving=kd, source_cache=cache)
        lean = tiny.generator(kp_source=ks, kp_driving=kd, source_cache=cache, with_deformed=False)
    assert set(plain) == {"mask", "sparse_deformed", "occlusion_map", "deformation", "deformed", "prediction"}
    for key, value in plain.items():
        assert torch.allclose(cached[key], value, atol=1e-6, rtol=0), key
    assert "deformed" not in lean
    assert torch.allclose(lean["prediction"], plain["prediction"], atol=1e-6, rtol=0)


def test_reduced_precision_keeps_sensitive_parts_fp32(tiny, golden) -> None:
    """Under autocast (bf16 on CPU stands in for fp16 on CUDA) key points, grids and maps stay fp32
    and close to the fp32 results; the prediction stays usable."""
    source = torch.from_numpy(golden["source"])
    driving = torch.from_numpy(golden["driving"][1:2])
    with torch.inference_mode():
        ref_ks, ref_kd = tiny.kp_detector(source), tiny.kp_detector(driving)
        ref = tiny.generator(source, kp_source=ref_ks, kp_driving=ref_kd)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ks, kd = tiny.kp_detector(source), tiny.kp_detector(driving)
            out = tiny.generator(source, kp_source=ks, kp_driving=kd)
            kn = normalize_kp(ks, kd, kd, adapt_movement_scale=True, use_relative_movement=True,
                              use_relative_jacobian=True)  # fmt: skip
    assert kn["value"].dtype == torch.float32 and kn["jacobian"].dtype == torch.float32
    assert torch.allclose(kn["jacobian"], ks["jacobian"], atol=1e-5)  # bf16 matmuls would miss this by ~1e-2
    for kp in (ks, kd):
        assert kp["value"].dtype == torch.float32 and kp["jacobian"].dtype == torch.float32
    for key in ("deformation", "mask", "occlusion_map", "sparse_deformed", "deformed"):
        assert out[key].dtype == torch.float32, key
    kp_err = (kd["value"] - ref_kd["value"]).abs().max().item()
    pred_err = (out["prediction"].float() - ref["prediction"]).abs().max().item()
    assert kp_err < 0.01, kp_err  # bf16 has an 8-bit mantissa (measured 3e-3); fp16 on CUDA is 8x finer
    assert pred_err < 0.05, pred_err  # measured 0.017


def test_select_precision_cpu() -> None:
    p = select_precision("cpu")
    assert p == Precision(device=torch.device("cpu"), dtype=torch.float32, autocast=False, channels_last=False)
    assert select_precision("auto").device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="fp16"):
        select_precision("cpu", fp16=True)
    with pytest.raises(ConfigError):
        select_precision("tpu")
    with pytest.raises(ValueError, match="float32"):
        Precision(device=torch.device("cpu"), dtype=torch.float32, autocast=True)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            select_precision("cuda")


# ---- loading ----------------------------------------------------------------------------------


def test_load_from_parsed_config_and_state(tiny, golden) -> None:
    cfg = yaml.safe_load(TINY_YAML.read_text())
    state = torch.load(TINY_CKPT, map_location="cpu", weights_only=True)
    model = load_fomm({"kp_detector": state["kp_detector"], "generator": state["generator"]}, config=cfg)
    assert not model.kp_detector.training and not model.generator.training
    assert all(not p.requires_grad for p in model.generator.parameters())
    assert model.config.image_size == 64 and model.config.num_kp == 10
    x = torch.from_numpy(golden["source"])
    with torch.inference_mode():
        assert torch.equal(model.kp_detector(x)["value"], tiny.kp_detector(x)["value"])


def test_load_slim_safetensors_fp16(tmp_path, tiny, golden) -> None:
    from safetensors.torch import save_file

    state = torch.load(TINY_CKPT, map_location="cpu", weights_only=True)
    flat = {}
    for module in ("kp_detector", "generator"):
        for k, v in state[module].items():
            flat[f"{module}.{k}"] = v.half() if v.is_floating_point() else v
    path = tmp_path / "tiny.safetensors"
    save_file(flat, str(path))
    model = load_fomm(path, TINY_YAML)
    x = torch.from_numpy(golden["source"])
    with torch.inference_mode():
        err = (model.kp_detector(x)["value"] - tiny.kp_detector(x)["value"]).abs().max().item()
    assert 0 < err < 5e-3  # fp16-rounded weights: close, not identical


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_bad_checkpoint_files_raise_weights_error(tmp_path) -> None:
    data = TINY_CKPT.read_bytes()
    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes(data[: len(data) // 2])
    html = tmp_path / "html.pth.tar"
    html.write_text("<!DOCTYPE html><html><head><title>Google Drive - quota exceeded</title></head></html>")
    garbage = tmp_path / "garbage.pth.tar"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for path in (truncated, html, garbage, tmp_path / "absent.pth.tar"):
        with pytest.raises(WeightsError):
            load_fomm(path, TINY_YAML)


def test_mismatched_checkpoint_raises_weights_error_naming_keys(tmp_path) -> None:
    state = _state(TINY_CKPT)
    del state["generator"]["final.bias"]
    missing = tmp_path / "missing.pth.tar"
    torch.save(state, missing)
    with pytest.raises(WeightsError, match=r"missing key.*final\.bias"):
        load_fomm(missing, TINY_YAML)

    state = _state(TINY_CKPT)
    state["kp_detector"]["extra.weight"] = torch.zeros(1)
    unexpected = tmp_path / "unexpected.pth.tar"
    torch.save(state, unexpected)
    with pytest.raises(WeightsError, match=r"unexpected key.*extra\.weight"):
        load_fomm(unexpected, TINY_YAML)

    # The right file with the wrong config: every shape differs.
    with pytest.raises(WeightsError, match="shape mismatch"):
        load_fomm(TINY_CKPT, FIXTURES / "vox-256.yaml")

    state = _state(TINY_CKPT)
    state["generator"]["final.weight"][0, 0, 0, 0] = float("nan")
    nan = tmp_path / "nan.pth.tar"
    torch.save(state, nan)
    with pytest.raises(WeightsError, match="NaN"):
        load_fomm(nan, TINY_YAML)


def test_bad_config_raises_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        FommConfig.load(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model_params: [1, 2\n")
    with pytest.raises(ConfigError):
        FommConfig.load(broken)
    cfg = yaml.safe_load(TINY_YAML.read_text())
    cfg["model_params"]["kp_detector_params"]["bogus"] = 1
    with pytest.raises(ConfigError, match="bogus"):
        FommConfig.load(cfg).build_kp_detector()
    cfg = yaml.safe_load(TINY_YAML.read_text())
    cfg["model_params"]["common_params"]["num_kp"] = 0
    with pytest.raises(ConfigError, match="num_kp"):
        FommConfig.load(cfg)
    cfg = yaml.safe_load(TINY_YAML.read_text())
    cfg["dataset_params"]["frame_shape"] = [60, 60, 3]
    with pytest.raises(ConfigError, match="divisible"):
        FommConfig.load(cfg)
    with pytest.raises(ConfigError, match="model_params"):
        FommConfig.load({"dataset_params": {}})


def test_channels_last_gives_the_same_outputs(tiny, golden) -> None:
    """The CUDA layout (NHWC) must not change results; checked here on the CPU."""
    model = load_fomm(TINY_CKPT, TINY_YAML).to("cpu", memory_format=torch.channels_last)
    assert model.generator.first.conv.weight.is_contiguous(memory_format=torch.channels_last)
    source = torch.from_numpy(golden["source"]).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ks = model.kp_detector(source)
        out = model.generator(kp_source=ks, kp_driving=ks, source_cache=model.generator.encode_source(source))
        ref = tiny.generator(torch.from_numpy(golden["source"]), kp_source=ks, kp_driving=ks)
    assert np.abs(ks["value"].numpy() - golden["kp_source_value"]).max() < 1e-4
    assert (out["prediction"] - ref["prediction"]).abs().max().item() < 1e-5


def _variant(**changes) -> dict:
    cfg = yaml.safe_load(TINY_YAML.read_text())
    mp = cfg["model_params"]
    for path, value in changes.items():
        section, key = path.split("__")
        target = {"common": mp["common_params"], "kp": mp["kp_detector_params"], "gen": mp["generator_params"],
                  "dm": mp["generator_params"].get("dense_motion_params")}[section]  # fmt: skip
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return cfg


@pytest.mark.parametrize(
    "changes, expected_keys",
    [
        ({"kp__pad": 3, "kp__single_jacobian_map": True}, {"occlusion_map", "deformed"}),
        ({"kp__scale_factor": 1, "dm__scale_factor": 1, "kp__num_blocks": 2}, {"occlusion_map", "deformed"}),
        ({"common__estimate_jacobian": False, "gen__estimate_occlusion_map": False}, {"deformed"}),
        ({"gen__num_down_blocks": 3, "dm__scale_factor": 0.5}, {"occlusion_map", "deformed"}),  # resized maps
        ({"gen__dense_motion_params": None}, set()),
    ],
)
def test_config_variants_run(changes: dict, expected_keys: set) -> None:
    """Options the public vox configs leave inactive still build, run and shape correctly."""
    cfg = FommConfig.load(_variant(**changes))
    torch.manual_seed(0)
    det, gen = cfg.build_kp_detector().eval(), cfg.build_generator().eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ks, kd = det(x), det(x.flip(-1))
        assert ks["value"].shape == (2, 10, 2)
        assert ("jacobian" in ks) == cfg.estimate_jacobian
        if cfg.estimate_jacobian:
            assert ks["jacobian"].shape == (2, 10, 2, 2)
        out = gen(x, kp_source=ks, kp_driving=kd)
    motion_keys = {"mask", "sparse_deformed", "deformation"} if expected_keys else set()
    assert set(out) == {"prediction"} | motion_keys | expected_keys
    assert out["prediction"].shape == (2, 3, 64, 64) and torch.isfinite(out["prediction"]).all()
    if "occlusion_map" in out:
        assert out["occlusion_map"].shape[:2] == (2, 1)
