"""``xraytriage cache build|verify|info``: the decode-once preprocessing cache (see docs/cache.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xraytriage.commands._common import add_overrides, add_progress_flag
from xraytriage.commands.exit_codes import EXIT_FAILED, EXIT_USAGE, fail

HELP = (
    "build: decode the manifest's scans (only new or changed ones) through the same load_image "
    "path as training into CACHE_DIR. verify: CRC-check every record and repair. info: list the "
    "stores. Training uses a store automatically when data.cache_dir is set and the preprocessing "
    "config matches."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cache",
        help="decode every scan once into a memory-mapped cache that training reads at GPU speed",
        description=HELP,
    )
    actions = parser.add_subparsers(dest="cache_action", metavar="ACTION")
    actions.required = True

    build = actions.add_parser(
        "build", help="decode new/changed scans into the cache", description="Decode new or changed scans."
    )
    build.add_argument("--config", type=Path, help="YAML config (preprocess and data sections are used)")
    build.add_argument("--manifest", type=Path, help="manifest CSV/Parquet (default: data.manifest)")
    build.add_argument("--root", type=Path, help="base folder for relative paths (default: the manifest's)")
    build.add_argument("--size", type=int, help="image size in pixels (default: preprocess.image_size)")
    build.add_argument("--cache-dir", type=Path, help="cache folder (default: data.cache_dir)")
    build.add_argument(
        "--dtype",
        choices=("uint16", "uint8", "float32"),
        default=None,
        help="stored sample type (default: data.cache_dtype from --config/overrides, else uint16): uint16 "
        "(error <= 1/131070), uint8 (half the disk; error <= 1/510), float32 (lossless: bit-identical "
        "to decoding, twice the disk of uint16). Training reads the store of data.cache_dtype",
    )
    build.add_argument("--workers", type=int, help="decoding processes (default: all CPU cores)")
    build.add_argument(
        "--no-verify", action="store_true", help="skip the CRC check of records already in the cache"
    )
    build.add_argument(
        "--rebuild", action="store_true", help="discard the existing store and decode everything"
    )
    add_progress_flag(build, "--quiet")
    add_overrides(build)
    build.set_defaults(handler=run)

    verify = actions.add_parser(
        "verify",
        help="CRC-check every record; drop bad ones so the next build re-decodes them",
        description="Check every store under CACHE_DIR; exit 1 if any record or index was bad.",
    )
    verify.add_argument("cache_dir", type=Path, help="cache folder")
    add_progress_flag(verify, "--quiet")
    verify.set_defaults(handler=run)

    info = actions.add_parser("info", help="list the stores in a cache folder", description="List stores.")
    info.add_argument("cache_dir", type=Path, help="cache folder")
    info.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    action = args.cache_action
    if action == "build":
        return _build(args)
    if action == "verify":
        return _verify(args)
    return _info(args)


def _build(args: argparse.Namespace) -> int:
    from xraytriage.config import load_config
    from xraytriage.data.cache import CacheError, build_cache
    from xraytriage.data.manifest import ManifestError, read_manifest

    overrides = list(args.overrides)
    if args.size is not None:
        overrides.append(f"preprocess.image_size={args.size}")
    cfg = load_config(args.config, overrides)
    manifest = args.manifest or cfg.data.manifest
    cache_dir = args.cache_dir or cfg.data.cache_dir
    if manifest is None or cache_dir is None:
        message = "give --manifest and --cache-dir (or a --config with data.manifest and data.cache_dir)"
        return fail("xraytriage cache build", message, EXIT_USAGE)
    try:
        frame = read_manifest(manifest, root=args.root or cfg.data.root, leakage="ignore")
    except ManifestError as exc:
        return fail("xraytriage cache build", str(exc), EXIT_FAILED)
    try:
        report = build_cache(
            frame["path"].astype(str).tolist(),
            cache_dir,
            cfg.preprocess,
            dtype=args.dtype or cfg.data.cache_dtype,
            workers=args.workers,
            verify=not args.no_verify,
            rebuild=args.rebuild,
            progress=not args.no_progress,
        )
    except CacheError as exc:
        return fail("xraytriage cache build", str(exc), EXIT_FAILED)
    ok = report.total - len(report.unreadable)
    print(
        f"cache {report.store}: {report.total} scans, {ok} cached, {report.decoded} decoded now, "
        f"{report.reused} unchanged, {report.repaired} bad records repaired, "
        f"{len(report.unreadable)} unreadable"
    )
    for path, (reason, message) in sorted(report.unreadable.items())[:50]:
        print(f"  unreadable [{reason}] {path}: {message}")
    if len(report.unreadable) > 50:
        print(f"  ... and {len(report.unreadable) - 50} more")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from xraytriage.data.cache import CacheError, store_lock

    stores = sorted(p for p in Path(args.cache_dir).glob("pp-*") if p.is_dir())
    if not stores:
        return fail("xraytriage cache verify", f"no cache stores in {args.cache_dir}", EXIT_FAILED)
    problems = 0
    for store in stores:
        try:
            with store_lock(store):
                problems += _verify_store(store, quiet=args.no_progress)
        except CacheError as exc:
            print(f"xraytriage cache verify: {exc}", file=sys.stderr)
            problems += 1
    return 1 if problems else 0


def _verify_store(store: Path, quiet: bool) -> int:
    """1 if the store had a problem (now repaired by dropping the bad records), else 0."""
    from xraytriage.data.cache import INDEX_NAME, drop_truncated, read_index, verify_records
    from xraytriage.utils.atomic import atomic_write_text

    index = read_index(store)
    if index is None:
        print(f"{store}: index missing or corrupt; the next build with this config decodes everything")
        return 1
    truncated = drop_truncated(store, index)
    bad = verify_records(store, index, progress=not quiet)
    for path in bad:
        del index.entries[path]
    if truncated or bad:
        atomic_write_text(store / INDEX_NAME, index.to_json())
    note = " (dropped; run `xraytriage cache build` to re-decode them)" if truncated or bad else ""
    print(
        f"{store}: {len(index.entries)} records OK, {truncated} past the end of a truncated shard, "
        f"{len(bad)} failed CRC{note}"
    )
    return 1 if truncated or bad else 0


def _info(args: argparse.Namespace) -> int:
    from xraytriage.data.cache import store_info

    stores = sorted(p for p in Path(args.cache_dir).glob("pp-*") if p.is_dir())
    if not stores:
        print(f"no cache stores in {args.cache_dir}")
        return 0
    for store in stores:
        info = store_info(store)
        if info is None:
            print(f"{store}: index missing or corrupt")
            continue
        print(
            f"{store}: {info['images']} images {info['image_size']}px {info['dtype']}, "
            f"{info['unreadable']} unreadable, {info['shards']} shards, {info['disk_bytes'] / 1e6:.1f} MB "
            f"({info['stale_bytes'] / 1e6:.1f} MB stale; `cache build --rebuild` reclaims it)"
        )
    return 0
