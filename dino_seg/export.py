"""ONNX export of a DINO ViT: [CLS], normed patch tokens and the last block's [CLS] attention, any batch and size.

    python -m dino_seg.export --pretrained_weights dino_vits16 --image_size 480 640 --output vits16.onnx

The graph takes `image` (B, 3, H, W), normalised with ImageNet's mean and std, and returns `cls` (B, D),
`patch_tokens` (B, N, D) (the last layer after the final norm, [CLS] dropped) and `attention` (B, heads, N) (the
last block's [CLS] row over the patches, softmax over all tokens). Batch, height and width are dynamic: the
reference's bicubic positional interpolation (scale factor (n + 0.1) / 14) is written as two small weight
matrices computed in the graph from the input size, so one file serves every size that is a multiple of the
patch (--image_size is the size the export is traced and checked at). DINOv2 (with or without registers) and
DINOv3 (RoPE) weights export through the Backbone interface at --image_size only, batch still dynamic: one file
per size. With onnxruntime installed (the `export` extra), the file is checked against the torch model and the
largest differences printed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from dino_seg.backbones import Backbone, DinoV1Backbone, as_backbone, cls_attention_row
from dino_seg.errors import UserError
from dino_seg.models import DinoVisionTransformer, is_vit

MIN_OPSET = 18  # torch.onnx's exporter (torch.export based) writes opset 18 and later
OUTPUTS = ("cls", "patch_tokens", "attention")


class ExportError(UserError):
    """Bad export input (size, opset, model); one line naming the flag."""


def cubic_weights(dst: torch.Tensor, in_size: int, scale: torch.Tensor) -> torch.Tensor:
    """(out, in) matrix of torch's bicubic interpolation (align_corners False, A = -0.75, edges clamped) along
    one axis: output indices `dst` (out,) float, sampled with scale factor `scale` (a 0-d tensor). Built from
    tensors, so an exported graph recomputes it for each input size."""
    a = -0.75
    src = (dst + 0.5) / scale - 0.5  # torch's area_pixel_compute_source_index (bicubic keeps negatives)
    base = torch.floor(src)
    t = src - base  # (out,)
    # Cubic convolution coefficients of the taps at base - 1, base, base + 1, base + 2.
    x = torch.stack((t + 1, t, 1 - t, 2 - t), dim=-1)  # (out, 4)
    near = ((a + 2) * x - (a + 3)) * x * x + 1  # |x| <= 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
    coeff = torch.where(x <= 1, near, far)  # (out, 4)
    taps = (base[:, None] + torch.arange(-1, 3, device=scale.device)[None]).clamp(0, in_size - 1)  # (out, 4)
    onehot = (taps[..., None] == torch.arange(in_size, device=scale.device)[None, None]).to(coeff.dtype)  # (out, 4, in)
    return (coeff[..., None] * onehot).sum(dim=1)  # (out, in)


class ExportedViT(nn.Module):
    """A DINO ViT's forward pass written for tracing: no Python branch depends on the input size."""

    def __init__(self, model: DinoVisionTransformer) -> None:
        super().__init__()
        if not is_vit(model):
            raise ExportError("--pretrained_weights: ONNX export needs a ViT (ResNet-50 has no patch tokens or "
                              "attention)")
        self.model = model
        self.patch_size = int(model.patch_size)
        self.side = int(round((model.pos_embed.shape[1] - 1) ** 0.5))

    def positions(self, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Positional embeddings (1, 1 + h*w, D) for an h x w grid; `h` and `w` are the row and column
        indices (aranges), so the grid size stays a graph value rather than a traced constant."""
        pos = self.model.pos_embed  # (1, 1 + s*s, D)
        s, d = self.side, pos.shape[-1]
        hf, wf = h.float(), w.float()
        rows, cols = hf[-1] + 1, wf[-1] + 1  # 0-d tensors: h and w
        wy = cubic_weights(hf, s, (rows + 0.1) / s)  # (h, s)
        wx = cubic_weights(wf, s, (cols + 0.1) / s)  # (w, s)
        # The reference uses the stored grid unchanged for a square input of its own size.
        same = (rows == s) & (cols == s)
        stored = torch.arange(s, device=pos.device)[None]
        wy = torch.where(same, (h[:, None] == stored).float(), wy)
        wx = torch.where(same, (w[:, None] == stored).float(), wx)
        grid = pos[0, 1:].reshape(s, s, d)  # (s, s, D)
        grid = torch.einsum("is,std,jt->ijd", wy, grid, wx)  # (h, w, D)
        return torch.cat((pos[:, :1], grid.reshape(1, -1, d)), dim=1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.model
        x = m.patch_embed.proj(image)  # (B, D, h, w)
        b, d = x.shape[0], x.shape[1]
        h = torch.arange(x.shape[2], device=x.device)
        w = torch.arange(x.shape[3], device=x.device)
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, D)
        x = torch.cat((m.cls_token.expand(b, -1, -1), x), dim=1) + self.positions(h, w)  # (B, 1 + h*w, D)
        for blk in m.blocks[:-1]:
            x = blk(x)
        # The last block by hand, so its attention probabilities come out of the same computation.
        last = m.blocks[-1]
        att = last.attn
        n = x.shape[1]
        qkv = att.qkv(last.norm1(x)).reshape(b, n, 3, att.num_heads, att.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = att.q_norm(qkv[0]), att.k_norm(qkv[1]), qkv[2]  # (B, heads, N, hd)
        probs = ((q * att.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, N, N)
        y = (probs @ v).transpose(1, 2).reshape(b, n, d)  # (B, N, D)
        x = x + last.ls1(att.proj(att.norm(y)))
        x = x + last.ls2(last.mlp(last.norm2(x)))
        x = m.norm(x)  # (B, N, D)
        return x[:, 0], x[:, 1:], probs[:, :, 0, 1:]


class ExportedBackbone(nn.Module):
    """Any ViT generation through the Backbone interface (DINOv2 with or without registers, DINOv3 with RoPE),
    traced at one input size: the same three outputs, registers dropped from `patch_tokens`, the [CLS] row's
    softmax over every token (registers included) restricted to the patches."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        if not backbone.is_vit:
            raise ExportError("--pretrained_weights: ONNX export needs a ViT (ResNet-50 has no patch tokens or "
                              "attention)")
        self.backbone = backbone
        self.patch_size = backbone.patch_size

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bb = self.backbone
        tokens, _, context = bb._prepare(image)  # (B, P + N, D), and RoPE for DINOv3
        blocks = bb.blocks
        for block in blocks[:-1]:
            tokens = bb._run_block(block, tokens, context)
        q, k, _, _, _ = bb._qkv(blocks[-1], tokens, context)  # (B, heads, P + N, hd), as the attention uses them
        attention = cls_attention_row(q, k, float(blocks[-1].attn.scale))  # (B, heads, P + N)
        out = bb._norm(bb._run_block(blocks[-1], tokens, context))  # (B, P + N, D)
        p = bb.num_prefix_tokens
        return out[:, 0], out[:, p:], attention[..., p:]


def exportable(model: nn.Module) -> tuple[nn.Module, bool]:
    """(the module to trace, whether its height and width can be dynamic): DINO ViTs get the in-graph
    positional interpolation; the later generations are traced at one size (one file per size)."""
    if isinstance(model, DinoVisionTransformer):
        return ExportedViT(model).eval(), True
    backbone = as_backbone(model)
    if isinstance(backbone, DinoV1Backbone):
        return ExportedViT(backbone.model).eval(), True
    return ExportedBackbone(backbone).eval(), False


def check_size(image_size: tuple[int, int], patch_size: int) -> None:
    h, w = image_size
    if h <= 0 or w <= 0 or h % patch_size or w % patch_size:
        near_h, near_w = (max(1, round(v / patch_size)) * patch_size for v in (h, w))
        raise ExportError(f"--image_size {h} {w}: expected multiples of the patch size {patch_size} "
                          f"(e.g. {near_h} {near_w})")


def check_opset(opset: int) -> None:
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ExportError(f"--opset {opset}: unsupported; expected {MIN_OPSET} to {newest} (torch.onnx's exporter "
                          f"and this onnx {onnx.__version__})")


def export_onnx(model: nn.Module, output: str | Path, image_size: tuple[int, int], *,
                opset: int = MIN_OPSET, dynamic_size: bool = True) -> Path:
    """Write `model` (a DINO ViT or a Backbone of a later generation) as ONNX to `output` (atomically); dynamic
    batch, and dynamic height and width for DINO ViTs unless `dynamic_size` is False (the later generations are
    traced at `image_size` only). Raises ExportError for a size that is not a multiple of the patch or a bad
    opset."""
    try:
        import onnx  # noqa: F401  (torch.onnx needs onnx and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ExportError(f"ONNX export needs the onnx and onnxscript packages ({err}): pip install "
                          "'dino-seg[export]'") from None
    from dino_seg.files import atomic_path

    if not is_vit(model):
        raise ExportError("--pretrained_weights: ONNX export needs a ViT (ResNet-50 has no patch tokens or "
                          "attention)")
    wrapper, can_be_dynamic = exportable(model)
    dynamic_size = dynamic_size and can_be_dynamic
    p = wrapper.patch_size
    check_size(image_size, p)
    check_opset(opset)
    example = torch.zeros(2, 3, *image_size)
    dims: dict[int, object] = {0: torch.export.Dim("batch", min=1)}
    if dynamic_size:
        dims[2] = p * torch.export.Dim("patch_rows", min=1, max=1024)
        dims[3] = p * torch.export.Dim("patch_cols", min=1, max=1024)
    output = Path(output)
    with atomic_path(output) as tmp, torch.no_grad():
        program = torch.onnx.export(wrapper, (example,), input_names=["image"], output_names=list(OUTPUTS),
                                    dynamic_shapes={"image": dims}, dynamo=True, opset_version=opset,
                                    external_data=False, verbose=False, optimize=True)
        program.save(str(tmp))
    return output


@torch.no_grad()
def check_onnx(model: nn.Module, path: str | Path, sizes: list[tuple[int, int, int]]) -> list[dict]:
    """Largest absolute difference of each output between onnxruntime and the torch model on random normalised
    images of each (batch, height, width) in `sizes`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = model.float().cpu()
    rows: list[dict] = []
    gen = torch.Generator().manual_seed(0)
    for b, h, w in sizes:
        image = torch.randn(b, 3, h, w, generator=gen)
        got = session.run(list(OUTPUTS), {"image": image.numpy()})
        want = reference_outputs(model, image)
        row: dict = {"size": (b, h, w)}
        for name, ours, theirs in zip(OUTPUTS, got, want):
            row[name] = float((torch.from_numpy(ours) - theirs).abs().max())
        rows.append(row)
    return rows


@torch.no_grad()
def reference_outputs(model: nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The three outputs from the model's own code paths (forward_features and the attention module's
    last_block_qkv, or the Backbone interface), not from the traced wrapper: what the export is checked against."""
    from dino_seg.attention import cls_row_attention, last_block_qkv

    if not isinstance(model, DinoVisionTransformer):
        backbone = as_backbone(model)
        out = backbone.forward_features(image)
        maps = backbone.last_attention_cls(image).maps  # (B, heads, h, w)
        return out.cls, out.patch_tokens, maps.flatten(2)
    tokens = model.forward_features(image)  # (B, 1 + N, D)
    q, k, _ = last_block_qkv(model, image)
    return tokens[:, 0], tokens[:, 1:], cls_row_attention(q, k, model.blocks[-1].attn.scale)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("python -m dino_seg.export", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--pretrained_weights", default="", type=str,
                        help="Preset name, official DINO file or checkpoint of `python -m train`; 'random' for a "
                             "pipeline check.")
    parser.add_argument("--arch", default=None, type=str, help="Architecture; inferred from the weights.")
    parser.add_argument("--patch_size", default=None, type=int, help="Patch size; inferred from the weights.")
    parser.add_argument("--checkpoint_key", default="teacher", type=str,
                        help="teacher or student of a full checkpoint.")
    parser.add_argument("--image_size", default=(480, 480), type=int, nargs=2, metavar=("H", "W"),
                        help="Height and width the model is traced and checked at (multiples of the patch).")
    parser.add_argument("--output", default="model.onnx", type=str, help="The ONNX file to write.")
    parser.add_argument("--opset", default=MIN_OPSET, type=int, help=f"ONNX opset ({MIN_OPSET} or later).")
    parser.add_argument("--static_size", action="store_true",
                        help="Fix height and width to --image_size (the batch stays dynamic).")
    parser.add_argument("--check", default="auto", choices=("auto", "on", "off"),
                        help="Compare onnxruntime's outputs with torch's (auto: when onnxruntime is installed).")
    return parser


def run(args: argparse.Namespace) -> int:
    from dino_seg.weights import load_model

    output = Path(args.output)
    if output.is_dir():
        raise ExportError(f"--output {output}: is a folder, expected a file name such as model.onnx")
    check_opset(args.opset)
    source = "" if args.pretrained_weights in ("", "random") else args.pretrained_weights
    model = load_model(source or None, arch=args.arch, patch_size=args.patch_size,
                       checkpoint_key=args.checkpoint_key)
    if not is_vit(model):
        raise ExportError("--pretrained_weights: ONNX export needs a ViT (ResNet-50 has no patch tokens or attention)")
    _, can_be_dynamic = exportable(model)
    patch = as_backbone(model).patch_size
    check_size(tuple(args.image_size), patch)
    h, w = args.image_size
    static = args.static_size or not can_be_dynamic
    export_onnx(model, output, (h, w), opset=args.opset, dynamic_size=not static)
    shape = "batch dynamic, " + (f"size fixed to {h}x{w}" if static else
                                 f"height and width dynamic (multiples of {patch})")
    if not can_be_dynamic:
        shape += ": this generation's positional encoding is traced at one size; export one file per size"
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB; {shape}; opset {args.opset})")
    if args.check == "off":
        return 0
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        if args.check == "on":
            raise ExportError("--check on: onnxruntime is not installed (pip install 'dino-seg[export]')") from None
        print("not checked: onnxruntime is not installed (pip install 'dino-seg[export]')")
        return 0
    sizes = [(1, h, w), (2, h, w)] if static else [(1, h, w), (2, h + patch, w + 2 * patch)]
    print("largest |onnxruntime - torch| per output:")
    for row in check_onnx(model, output, sizes):
        b, hh, ww = row["size"]
        print(f"  batch {b}, {hh}x{ww}: " + ", ".join(f"{name} {row[name]:.1e}" for name in OUTPUTS))
    return 0


def main(argv: list[str] | None = None) -> int:
    from dino_seg.cli import run_command

    args = get_args_parser().parse_args(argv)
    return run_command(lambda: run(args), interrupted="no file written (the ONNX file is written whole or not at all)")


if __name__ == "__main__":
    raise SystemExit(main())
