"""Known checkpoints as records, and the packaged FOMM configs they pair with."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from avatarcam.errors import WeightsError

CONFIGS_DIR = Path(__file__).with_name("configs")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")

FOMM_LICENCE = "CC BY-NC 4.0 (non-commercial use only), as published with the FOMM repository"
FOMM_SOURCE = "https://github.com/AliaksandrSiarohin/first-order-model"


@dataclass(frozen=True)
class WeightSpec:
    """One downloadable checkpoint.

    ``sha256`` and ``size`` are what a download is verified against; ``None`` means unknown. Without
    a sha256 a file can only be fetched with an explicit ``allow_unverified``. ``md5`` is a
    weaker, optional publisher checksum that is still checked when given. ``config`` names a YAML in
    :data:`CONFIGS_DIR`.
    """

    name: str
    filename: str
    urls: tuple[str, ...]
    sha256: str | None
    size: int | None
    licence: str
    source: str
    config: str
    md5: str | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise ValueError(f"WeightSpec.name must be a plain file-safe name, got {self.name!r}")
        if Path(self.filename).name != self.filename or not self.filename:
            raise ValueError(f"WeightSpec.filename must be a bare file name, got {self.filename!r}")
        if not isinstance(self.urls, tuple) or not all(u.startswith(("http://", "https://")) for u in self.urls):
            raise ValueError(f"WeightSpec.urls must be a tuple of http(s) URLs, got {self.urls!r}")
        if self.sha256 is not None and not _HEX64.fullmatch(self.sha256):
            raise ValueError(f"WeightSpec.sha256 must be 64 lowercase hex digits or None, got {self.sha256!r}")
        if self.md5 is not None and not _HEX32.fullmatch(self.md5):
            raise ValueError(f"WeightSpec.md5 must be 32 lowercase hex digits or None, got {self.md5!r}")
        if self.size is not None and self.size <= 0:
            raise ValueError(f"WeightSpec.size must be positive or None, got {self.size!r}")

    @property
    def verifiable(self) -> bool:
        """True when the sha256 is known (the size is an extra, early check)."""
        return self.sha256 is not None

    @property
    def config_path(self) -> Path:
        return config_path(self.config)


# Mirrors: Hugging Face copies whose Git LFS pointers publish the sha256 (and, for vox-adv-cpk, the
# exact size) we verify against, plus the Avatarify S3 bucket. None of them could be reached from the
# machine this was written on, which is safe: every byte is checked before it is installed. The
# authors' own links (a Google Drive folder and Yandex Disk, in the FOMM README) need a browser,
# hence the `avatarcam weights add PATH` route.
REGISTRY: dict[str, WeightSpec] = {
    spec.name: spec
    for spec in (
        WeightSpec(
            name="vox-cpk",
            filename="vox-cpk.pth.tar",
            urls=(
                "https://huggingface.co/MCMLXXXVII/thinplatesv1/resolve/main/vox-cpk.pth.tar",
                "https://huggingface.co/datasets/mishig/first-order-motion-model/resolve/main/vox-cpk.pth.tar",
            ),
            sha256="abb41ab1f279f26326c0d6e4d20702de6658364665aa1313daa7a63e89ea2b23",
            size=728_766_691,
            licence=FOMM_LICENCE,
            source=FOMM_SOURCE,
            config="vox-256.yaml",
            note="VoxCeleb faces at 256x256, trained without the adversarial loss.",
        ),
        WeightSpec(
            name="vox-adv-cpk",
            filename="vox-adv-cpk.pth.tar",
            urls=(
                "https://huggingface.co/ashpexx/my-models/resolve/14eb0c66a25dd2641f15fda32adbc6a568f97d3c/vox-adv-cpk.pth.tar",
                "https://huggingface.co/spaces/abhishek/first-order-motion-model/resolve/main/weights/vox-adv-cpk.pth.tar",
            ),
            # From the Git LFS pointer of the Hugging Face copies (the authors publish no hash).
            sha256="6792d6810d7f46e3c5c487a1cfec916b96fad8912c3c6cc81baa1fc300c820d3",
            size=750_926_934,
            licence=FOMM_LICENCE,
            source=FOMM_SOURCE,
            config="vox-adv-256.yaml",
            note="VoxCeleb faces at 256x256, fine-tuned with the adversarial loss (full training file).",
        ),
        WeightSpec(
            name="vox-adv-cpk-avatarify",
            # Saved under its own name: it is a different (slimmed, ~228 MB) file than vox-adv-cpk.
            filename="vox-adv-cpk-avatarify.pth.tar",
            urls=(
                "https://openavatarify.s3-avatarify.com/weights/vox-adv-cpk.pth.tar",
                "https://openavatarify.s3.amazonaws.com/weights/vox-adv-cpk.pth.tar",
            ),
            sha256=None,
            size=None,
            licence=FOMM_LICENCE,
            source=FOMM_SOURCE + " (as redistributed by github.com/alievk/avatarify-python)",
            config="vox-adv-256.yaml",
            md5="8a45a24037871c045fbb8a6a8aa95ebc",  # printed in the Avatarify README; no sha256/size published
            note="The vox-adv weights as Avatarify ships them; only an md5 is published (--allow-unverified).",
        ),
    )
}


def get_spec(name: str) -> WeightSpec:
    """The record called ``name``; raises :class:`WeightsError` listing the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise WeightsError(
            f"unknown checkpoint {name!r}; known: {', '.join(REGISTRY)}. "
            "For your own file use `avatarcam weights add PATH`."
        ) from None


def config_path(name: str) -> Path:
    """Path of a packaged FOMM YAML (``vox-256.yaml``, ``vox-adv-256.yaml``)."""
    path = CONFIGS_DIR / name
    if Path(name).name != name or not path.is_file():
        known = sorted(p.name for p in CONFIGS_DIR.glob("*.yaml"))
        raise WeightsError(f"no packaged FOMM config {name!r}; packaged: {', '.join(known)}. Or pass a YAML path.")
    return path
