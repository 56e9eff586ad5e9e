"""The one place that decides where and how models run: device, compute dtype, autocast, memory format.

Everything that runs a network asks :func:`select_precision` once and then uses the returned
:class:`Precision` for every tensor it creates and every forward it runs, so there is no second
opinion about ``cuda`` vs ``cpu`` or fp16 vs fp32 anywhere else in the code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from avatarcam.errors import ConfigError


@dataclass(frozen=True)
class Precision:
    """How to run a model.

    ``device``: where tensors live. ``dtype``: the compute dtype of the bulk (convolutions):
    float16 when ``autocast`` is on, else float32. Weights always stay float32; autocast casts
    per op, and code marked numerically sensitive turns autocast off locally (see
    :func:`fp32_region`). ``channels_last``: use NHWC memory format (faster convolutions on
    tensor cores).
    """

    device: torch.device
    dtype: torch.dtype
    autocast: bool
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"Precision.dtype must be float32, float16 or bfloat16, got {self.dtype}")
        if self.autocast and self.dtype == torch.float32:
            raise ValueError("Precision.autocast=True needs a reduced dtype (float16 or bfloat16), got float32")

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast_context(self, *, cache_enabled: bool = True) -> contextlib.AbstractContextManager:
        """Autocast for the bulk of a forward pass (a no-op context when autocast is off).

        ``cache_enabled=False`` is required while capturing CUDA graphs.
        """
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype, cache_enabled=cache_enabled)

    @contextlib.contextmanager
    def inference(self, *, cache_enabled: bool = True) -> Iterator[None]:
        """``torch.inference_mode`` plus :meth:`autocast_context`: wrap every model call in this."""
        with torch.inference_mode(), self.autocast_context(cache_enabled=cache_enabled):
            yield

    def describe(self) -> str:
        name = (
            "fp16 autocast" if self.autocast and self.dtype == torch.float16 else str(self.dtype).replace("torch.", "")
        )
        return f"{self.device} {name}{' channels-last' if self.channels_last else ''}"


def select_precision(device: str | torch.device = "auto", fp16: bool | None = None) -> Precision:
    """Decide device and precision.

    ``device``: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    ``fp16``: None means fp16 autocast on CUDA and fp32 on CPU; True on a CPU device is refused
    because CPU fp16 convolutions are slower than fp32, not faster.
    """
    if isinstance(device, str):
        name = device.strip().lower()
        if name == "auto":
            dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            try:
                dev = torch.device(name)
            except RuntimeError as exc:
                raise ConfigError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'.") from exc
    else:
        dev = device
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {str(dev)!r} was requested but CUDA is not available in this PyTorch "
                f"({torch.__version__}): install a CUDA build of torch and a GPU driver, or use --device cpu."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {str(dev)!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)."
            )
    elif dev.type != "cpu":
        raise ConfigError(f"device {str(dev)!r} is not supported: use 'auto', 'cpu' or 'cuda'.")
    if fp16 is None:
        fp16 = dev.type == "cuda"
    if fp16 and dev.type != "cuda":
        raise ConfigError("fp16 needs a CUDA GPU; drop the fp16 option or choose a CUDA device.")
    on_gpu = dev.type == "cuda"
    return Precision(
        device=dev,
        dtype=torch.float16 if fp16 else torch.float32,
        autocast=bool(fp16),
        channels_last=on_gpu,
    )


def fp32_region(device_type: str) -> contextlib.AbstractContextManager:
    """Turn autocast off for numerically sensitive code (softmax-expectations, grids, warps).

    Callers cast their inputs with ``.float()`` inside the region; outside autocast this is a
    cheap no-op context.
    """
    return torch.autocast(device_type=device_type, enabled=False)
