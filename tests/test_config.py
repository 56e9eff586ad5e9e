import dataclasses
import sys

import pytest

from avatarcam.cli import build_parser, main, resolve_config
from avatarcam.config import (AppConfig, CaptureConfig, EngineConfig, OutputConfig, config_from_mapping, load_config,
                              to_toml, with_overrides)
from avatarcam.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def test_defaults_match_the_product_card():
    c = AppConfig()
    assert (c.output.width, c.output.height, c.output.fps) == (1280, 720, 30.0)
    assert c.engine.name == "mesh"
    assert c.sinks.kinds == ("virtualcam", "window")


def test_toml_file_fills_stages(tmp_path):
    p = tmp_path / "a.toml"
    p.write_text('stats = true\n[output]\nwidth = 640\nheight = 480\nfit = "crop"\n[engine]\nname = "passthrough"\n'
                 '[sinks]\nkinds = ["null"]\n[crop]\noffset = [0.1, -0.2]\n')
    c = load_config(p)
    assert c.stats is True
    assert (c.output.width, c.output.height, c.output.fit) == (640, 480, "crop")
    assert c.engine.name == "passthrough" and c.sinks.kinds == ("null",)
    assert c.crop.offset == (0.1, -0.2)
    assert c.capture == CaptureConfig()  # untouched stages keep defaults


@pytest.mark.parametrize("text, needle", [
    ("[output]\nwidht = 3\n", "widht"),
    ("[output]\nfit = 'zoomy'\n", "zoomy"),
    ("[output]\npad = 'grey'\n", "grey"),
    ("[output]\nfps = 0\n", "fps"),
    ("[nonsense]\nx = 1\n", "nonsense"),
    ("[output\n", "TOML"),
    ("[output]\nwidth = 'wide'\n", "width"),
    ("[mesh]\nmouth_fill = 'paint'\n", "paint"),
    ("[mesh]\nmax_roll = 120\n", "max_roll"),
    ("[mesh]\nlid_gain = 9.0\n", "lid_gain"),
])
def test_bad_config_is_a_clear_error(tmp_path, text, needle):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_config(p)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/avatarcam.toml")


def test_cross_field_check_names_the_values():
    with pytest.raises(ConfigError, match="641x480"):
        AppConfig(output=OutputConfig(width=641, height=480))
    # the same odd size is fine without a virtual camera
    config_from_mapping({"output": {"width": 641, "height": 480}, "sinks": {"kinds": ["null"]}})
    with pytest.raises(ConfigError, match="find_best_frame"):
        AppConfig(engine=EngineConfig(name="passthrough", find_best_frame=True))


def test_cli_flags_override_the_file(tmp_path):
    p = tmp_path / "a.toml"
    p.write_text("[output]\nwidth = 640\nheight = 480\n")
    args = build_parser().parse_args(["--config", str(p), "run", "--height", "360", "--engine", "passthrough",
                                      "--driving", "x.mp4", "--sink", "null", "--sink", "null"])
    c = resolve_config(args)
    assert (c.output.width, c.output.height) == (640, 360)
    assert c.capture.source == "x.mp4" and c.capture.loop is True
    assert c.sinks.kinds == ("null",)


def test_pad_flag_reaches_the_compositor():
    from avatarcam.app import build_compositor

    assert AppConfig().output.pad == "blur"
    args = build_parser().parse_args(["run", "--pad", "black"])
    config = resolve_config(args)
    assert config.output.pad == "black"
    assert build_compositor(config).pad == "black"


def test_config_print_round_trips(capsys):
    assert main(["config", "--print", "--engine", "fomm", "--size", "256", "--fps", "25"]) == 0
    text = capsys.readouterr().out
    data = tomllib.loads(text)
    c = config_from_mapping(data)
    assert c.engine.name == "fomm" and c.engine.size == 256 and c.output.fps == 25.0
    assert c == dataclasses.replace(c)  # frozen, comparable
    assert to_toml(c) == text


def test_with_overrides_skips_none():
    c = with_overrides(AppConfig(), {"output": {"width": None, "height": 360}})
    assert c.output.height == 360 and c.output.width == 1280


def test_mesh_section_reaches_the_engine(tmp_path):
    from avatarcam.app import build_engine

    p = tmp_path / "mesh.toml"
    p.write_text('[mesh]\nmouth_fill = "driver"\nmax_yaw = 20.0\nmax_roll = 10.0\nmax_shift = 0.1\nlid_gain = 1.0\n')
    args = build_parser().parse_args(["--config", str(p), "run", "--device", "cpu"])
    engine = build_engine(resolve_config(args))
    assert engine.mouth_fill == "driver" and engine.reads_drive_pixels
    assert (engine.limits.max_yaw, engine.limits.max_roll, engine.limits.max_shift) == (20.0, 10.0, 0.1)
    assert engine.limits.max_pitch == 25.0 and engine.lid_gain == 1.0
    # The flag wins over the file.
    args = build_parser().parse_args(["--config", str(p), "run", "--mouth-fill", "synthetic", "--device", "cpu"])
    assert build_engine(resolve_config(args)).mouth_fill == "synthetic"


def test_mesh_config_defaults_are_the_engines():
    import inspect

    from avatarcam.config import MeshConfig
    from avatarcam.engines.mesh import MeshEngine

    engine_defaults = {k: v.default for k, v in inspect.signature(MeshEngine.__init__).parameters.items()}
    for f in dataclasses.fields(MeshConfig):
        assert engine_defaults[f.name] == f.default, f.name
