"""``xraytriage export``: a model bundle as an ONNX or TorchScript file for serving."""

from __future__ import annotations

import argparse
from pathlib import Path

from xraytriage.commands.exit_codes import EXIT_EXPORT_MISMATCH, EXIT_FAILED, EXIT_OK, fail

HELP = """Export a trained model bundle (RUN_DIR/model.pt) for serving without xraytriage.

The exported graph takes a float32 batch shaped (batch, in_channels, image_size, image_size) -- the
decoded image in [0,1], resized as the bundle's preprocess settings say, then (x - mean) / std --
with a dynamic batch axis, and outputs per-class PROBABILITIES: sigmoid(logits / temperature), or
softmax for multiclass models, using the bundle's calibration temperatures. Compare them with the
stored thresholds to reproduce `xraytriage score` decisions.

Labels, thresholds, preprocess settings (JSON), model_id, task and temperatures are embedded in the
file (ONNX metadata_props; TorchScript extra file xraytriage.json) and written beside it as FILE.json.

After writing, the command runs the exported file (ONNX Runtime on CPU, or the TorchScript loader)
and the PyTorch model on random batches of 1 and 3 images and compares the probabilities.

Exit codes: 0 written and outputs match; 1 bundle unreadable or export failed; 3 the exported
outputs differ from PyTorch beyond --atol/--rtol (the file is kept for inspection).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model bundle to ONNX or TorchScript",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", required=True, type=Path, metavar="BUNDLE", help="model bundle (RUN_DIR/model.pt)"
    )
    p.add_argument(
        "--format",
        required=True,
        choices=["onnx", "torchscript"],
        help="onnx (needs the onnx and onnxruntime packages) or torchscript",
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="FILE",
        help="file to write (FILE.json is written beside it)",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version, 17 or newer (default 17)")
    p.add_argument(
        "--atol", type=float, default=1e-4, help="absolute tolerance of the parity check (default 1e-4)"
    )
    p.add_argument(
        "--rtol", type=float, default=1e-3, help="relative tolerance of the parity check (default 1e-3)"
    )
    p.add_argument(
        "--no-check", action="store_true", help="skip the parity check against PyTorch (not recommended)"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from xraytriage.deploy.export import ExportError, export_bundle

    try:
        result = export_bundle(
            args.model,
            args.format,
            args.out,
            opset=args.opset,
            check=not args.no_check,
            atol=args.atol,
            rtol=args.rtol,
        )
    except (ExportError, ValueError, FileNotFoundError) as exc:
        return fail("xraytriage export", str(exc), EXIT_FAILED)
    print(f"wrote {result.path} ({result.format}, model {result.metadata['model_id']})")
    print(f"metadata: {result.metadata_path}")
    parity = result.parity
    if parity is None:
        print("parity check skipped (--no-check)")
        return EXIT_OK
    verdict = "match" if parity.ok else "DO NOT MATCH"
    print(
        f"parity check (batches {parity.batch_sizes}): outputs {verdict} PyTorch, "
        f"max |diff| {parity.max_abs_diff:.2e} (atol {parity.atol:g}, rtol {parity.rtol:g})"
    )
    return EXIT_OK if parity.ok else EXIT_EXPORT_MISMATCH
