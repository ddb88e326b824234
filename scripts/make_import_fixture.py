"""Build a small open-source-style PyTorch DLRM, export it to ONNX, and import it.

Writes tests/fixtures/torch_dlrm/model.onnx (the committed fixture of tests/test_import.py)
and, with --import-to DIR, runs `deeprec model import` on it. Needs the [dev] extra
(onnxscript, for torch.onnx.export; PyTorch itself is a dependency of deeprec):

    pip install -e '.[dev]'
    python scripts/make_import_fixture.py [--out FILE] [--legacy] [--import-to DIR]

The model follows facebookresearch/dlrm's DLRM_Net: nn.EmbeddingBag(mode="sum") tables,
a bottom MLP on the dense features, the dot interaction of the bottom output and the
pooled embeddings (strictly lower triangle), a top MLP and a sigmoid.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

DENSE = 4
DIM = 8
ROWS = (40, 60, 80)
BOTTOM = (16, DIM)
TOP = (16, 1)
FIXTURE = Path(__file__).resolve().parent.parent / "tests/fixtures/torch_dlrm/model.onnx"


def mlp(fan_in: int, widths, sigmoid_last: bool) -> nn.Sequential:
    layers = []
    for i, width in enumerate(widths):
        layers.append(nn.Linear(fan_in, width))
        last = i == len(widths) - 1
        layers.append(nn.Sigmoid() if last and sigmoid_last else nn.ReLU())
        fan_in = width
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    """forward(dense, ids_0, offsets_0, ids_1, offsets_1, ...) -> [N, 1] click probability."""

    def __init__(self, dense=DENSE, dim=DIM, rows=ROWS, bottom=BOTTOM, top=TOP):
        super().__init__()
        self.emb_l = nn.ModuleList(nn.EmbeddingBag(n, dim, mode="sum") for n in rows)
        self.bot_l = mlp(dense, bottom, sigmoid_last=False)
        n = 1 + len(rows)
        self.top_l = mlp(dim + n * (n - 1) // 2, top, sigmoid_last=True)
        li, lj = torch.tril_indices(n, n, offset=-1)
        self.register_buffer("li", li, persistent=False)
        self.register_buffer("lj", lj, persistent=False)

    def forward(self, dense, *bags):
        x = self.bot_l(dense)
        ly = [emb(bags[2 * k], bags[2 * k + 1]) for k, emb in enumerate(self.emb_l)]
        t = torch.stack([x, *ly], dim=1)  # [N, 1 + tables, dim]
        z = torch.bmm(t, t.transpose(1, 2))
        return self.top_l(torch.cat([x, z[:, self.li, self.lj]], dim=1))


def example_inputs(model: DLRM, batch: int = 5, seed: int = 0):
    """Dense features, then ids and offsets (bag starts) per table; lengths 0..3."""
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(batch, model.bot_l[0].in_features, generator=g)]
    for emb in model.emb_l:
        lengths = torch.randint(0, 4, (batch,), generator=g)
        offsets = torch.cumsum(lengths, 0) - lengths
        inputs += [
            torch.randint(0, emb.num_embeddings, (int(lengths.sum()),), generator=g),
            offsets,
        ]
    return tuple(inputs)


def input_names(model: DLRM) -> list[str]:
    names = ["dense"]
    for k in range(len(model.emb_l)):
        names += [f"cat{k}_ids", f"cat{k}_offsets"]
    return names


def export(model: DLRM, out: Path, legacy: bool = False) -> Path:
    """ONNX with a dynamic batch and dynamic id counts, as torch.onnx.export writes it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    names = input_names(model)
    batch = torch.export.Dim("N")
    shapes = [{0: batch}]
    for name in names[1:]:
        shapes.append({0: batch if name.endswith("offsets") else torch.export.Dim(name)})
    dynamic = {"dynamic_shapes": (shapes[0], tuple(shapes[1:]))}  # (dense, *bags)
    if legacy:  # the TorchScript exporter names its dynamic axes instead
        dynamic = {"dynamic_axes": {n: {0: "N"} for n in names if not n.endswith("ids")}}
        dynamic["dynamic_axes"] |= {n: {0: f"{n}_total"} for n in names if n.endswith("ids")}
    torch.onnx.export(
        model.eval(),
        example_inputs(model),
        str(out),
        input_names=names,
        output_names=["scores"],
        dynamo=not legacy,
        external_data=False,
        **dynamic,
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FIXTURE)
    parser.add_argument("--legacy", action="store_true", help="TorchScript exporter (dynamo=False)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--import-to", help="then run `deeprec model import` into this directory")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    path = export(DLRM(), args.out, legacy=args.legacy)
    print(f"exported {path} ({path.stat().st_size} bytes)")
    if args.import_to:
        command = [sys.executable, "-m", "deeprec.cli", "model", "import", str(path)]
        return subprocess.call([*command, "--out", args.import_to, "--force"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
