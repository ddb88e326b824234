"""The architecture registry: name (as ``model.json`` spells it) -> Architecture.

One module per family holds its spec construction, parameter shapes, ONNX dense part,
NumPy reference and FLOPs; everything else looks an architecture up here.
"""

from __future__ import annotations

from .base import Architecture
from .dien import DIEN
from .din import DIN
from .dlrm import DLRM
from .imported import IMPORTED
from .ncf import NCF
from .wnd import MTWND, WND

ARCHITECTURES: dict[str, Architecture] = {
    a.name: a for a in (DLRM, NCF, WND, MTWND, DIN, DIEN, IMPORTED)
}


def get(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


__all__ = ["ARCHITECTURES", "Architecture", "get"]
