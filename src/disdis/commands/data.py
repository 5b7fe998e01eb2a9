"""``disdis data``: generate, inspect, view and cut down ground-truth datasets."""

from __future__ import annotations

import argparse
import os
import time

from disdis.errors import DisdisError

_KINDS_HELP = ("dataset kind: shapes3d, dsprites, mpi3d, cars3d, celeba or grid "
               "(default: inferred from the file)")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data", help="generate, inspect, view and subset ground-truth datasets",
        description="Ground-truth datasets: write the procedural Shapes3D-like and dSprites-like "
        "sets in their published layouts, show a contact sheet of any dataset, print its "
        "factor grid, or cut a factor sub-grid into a small grid npz.")
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    make = sub.add_parser(
        "make", help="render a procedural dataset in the published file layout",
        description="Render the full factor grid. shapes3d: 480000 images in the 3dshapes.h5 "
        "layout ('images' (N,R,R,3) uint8, 'labels' (N,6) float64). dsprites: 737280 binary "
        "64x64 images in the published npz layout (imgs, latents_classes, latents_values). "
        "celeba-like: --count Shapes3D-like scenes at CelebA's 178x218 in the CelebA folder layout "
        "(img_align_celeba/*.jpg, list_attr_celeba.txt with 6 binary attributes that are functions "
        "of the scene: Warm_Object, Cool_Wall, Warm_Floor, Large_Object, Round_Object, Tilted_Left; "
        "scene_factors.csv with each image's factors), for the CelebA loader and TAD. "
        "Deterministic; written to a temporary file and renamed, so an interrupted run leaves "
        "nothing under the final name.")
    make.add_argument("dataset", choices=("shapes3d", "dsprites", "celeba-like"))
    make.add_argument("--out", required=True, help="output file (.h5 or .hdf5 for shapes3d, .npz for "
                      "dsprites), or a new folder for celeba-like")
    make.add_argument("--count", type=int, default=2000, help="celeba-like: number of images (default 2000)")
    make.add_argument("--seed", type=int, default=0, help="celeba-like: seed of the scenes (default 0)")
    make.add_argument("--resolution", type=int,
                      help=f"image size for shapes3d: {MAKE_RESOLUTIONS[0]} to {MAKE_RESOLUTIONS[1]} px in "
                      f"steps of {MAKE_RESOLUTIONS[2]} (default 64, as published); dsprites is always 64, "
                      "celeba-like always CelebA's 178x218")
    make.set_defaults(func=_make)

    show = sub.add_parser(
        "show", help="write a contact sheet PNG of a dataset",
        description="One row per factor, traversing its values (at most --columns of them) from "
        "a random base image; rows of random images for CelebA.")
    show.add_argument("path", help="dataset file or folder")
    show.add_argument("--out", required=True, help="PNG to write")
    show.add_argument("--kind", help=_KINDS_HELP)
    show.add_argument("--seed", type=int, default=0, help="seed of the random base image (default 0)")
    show.add_argument("--columns", type=int, default=20, help="most values shown per factor (default 20)")
    show.set_defaults(func=_show)

    info = sub.add_parser("info", help="print a dataset's kind, size and factor grid")
    info.add_argument("path", help="dataset file or folder")
    info.add_argument("--kind", help=_KINDS_HELP)
    info.set_defaults(func=_info)

    subset = sub.add_parser(
        "subset", help="write a factor sub-grid of a dataset as a grid npz",
        description="Keep some values of some factors (others keep all), optionally at a lower "
        "resolution (area averaging), and write the result as a grid npz (images, factor_sizes, "
        "factor_names; canonical order) that open_dataset reads back. Example: disdis data "
        "subset 3dshapes.h5 --out small.npz --keep floor_hue=0,3,6 --keep shape=0,1 --resolution 16")
    subset.add_argument("path", help="source dataset file or folder")
    subset.add_argument("--out", required=True, help="grid npz to write")
    subset.add_argument("--keep", action="append", default=[], metavar="FACTOR=I,J,...",
                        help="class indices of FACTOR to keep (repeatable)")
    subset.add_argument("--resolution", type=int, help="downscale to this size (must divide the native one)")
    subset.add_argument("--kind", help=_KINDS_HELP)
    subset.set_defaults(func=_subset)


# what `data make` writes: the file extensions of each dataset (None: a folder)
MAKE_SUFFIXES = {"shapes3d": (".h5", ".hdf5"), "dsprites": (".npz",), "celeba-like": None}
# shapes3d --resolution: (smallest, largest, step). Below 4 px the object is a pixel or two; the
# models halve images (VAE and extractor encoders need multiples of 16) and `data subset` and
# data.resolution area-average to divisors, so sizes are kept to multiples of 4; above 256 px
# the file passes 94 GB.
MAKE_RESOLUTIONS = (4, 256, 4)


def check_out(dataset: str, out: str, flag: str = "--out") -> None:
    """Refuse an output name whose extension is not the format written, before any work."""
    suffixes = MAKE_SUFFIXES[dataset]
    ext = os.path.splitext(out.rstrip("/" + os.sep))[1].lower()
    if suffixes is None:
        if ext in (".h5", ".hdf5", ".npz"):
            raise DisdisError(f"{flag} {out}: {dataset} writes a folder (img_align_celeba/, "
                              f"list_attr_celeba.txt), not a {ext} file; give a folder name")
    elif ext not in suffixes:
        kind = "an HDF5 file" if suffixes[0] == ".h5" else "an npz (zip) file"
        raise DisdisError(f"{flag} {out}: {dataset} writes {kind}; give a name ending in "
                          f"{' or '.join(suffixes)}{f', not {ext}' if ext else ''}")


def _make(args: argparse.Namespace) -> int:
    check_out(args.dataset, args.out)
    start = time.perf_counter()
    if args.dataset == "shapes3d":
        from disdis.data.shapes3d import write_shapes3d
        lo, hi, step = MAKE_RESOLUTIONS
        resolution = 64 if args.resolution is None else args.resolution
        if not lo <= resolution <= hi or resolution % step:
            raise DisdisError(f"--resolution: shapes3d is rendered at {lo} to {hi} px in steps of {step} "
                              f"(64 as published), got {resolution}")
        write_shapes3d(args.out, resolution)
    elif args.dataset == "dsprites":
        from disdis.data.dsprites import write_dsprites
        if args.resolution not in (None, 64):
            raise DisdisError("--resolution: dsprites is always 64x64, as published")
        write_dsprites(args.out)
    else:
        from disdis.data.celeba_like import write_celeba_like
        if args.resolution is not None:
            raise DisdisError("--resolution: celeba-like images are always 178x218, as CelebA's "
                              "(data.resolution crops and resizes them when read)")
        write_celeba_like(args.out, args.count, args.seed)
    print(f"wrote {args.out} ({args.dataset}) in {time.perf_counter() - start:.1f} s")
    return 0


def _show(args: argparse.Namespace) -> int:
    from disdis.data import open_dataset
    from disdis.data.contact_sheet import save_contact_sheet
    if args.columns < 1:
        raise DisdisError(f"--columns must be positive, got {args.columns}")
    save_contact_sheet(open_dataset(args.path, args.kind, kind_key="--kind"), args.out, args.seed, args.columns)
    print(f"wrote {args.out}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from disdis.data import open_dataset
    ds = open_dataset(args.path, args.kind, kind_key="--kind")
    print(f"kind: {ds.kind}\nimages: {len(ds)} x {ds.resolution}x{ds.resolution}x{ds.channels} uint8")
    if ds.has_factor_grid:
        for name, size in zip(ds.factor_names, ds.factor_sizes):
            print(f"factor {name}: {size}")
    else:
        print(f"attributes: {len(ds.attribute_names)} binary ({', '.join(ds.attribute_names)})")
    return 0


def parse_keep(items: list[str]) -> dict[str, list[int]]:
    """``["floor_hue=0,3,6", "shape=0,1"]`` -> ``{"floor_hue": [0, 3, 6], "shape": [0, 1]}``."""
    keep: dict[str, list[int]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            keep[name.strip()] = [int(v) for v in values.split(",")]
        except ValueError:
            raise DisdisError(f"--keep {item!r}: expected FACTOR=I,J,... with integer class "
                              f"indices") from None
    return keep


def _subset(args: argparse.Namespace) -> int:
    from disdis.data import open_dataset, write_grid_npz
    if not args.out.lower().endswith(".npz"):
        raise DisdisError(f"--out {args.out}: subset writes a grid npz (a zip file); give a name ending in .npz")
    ds = open_dataset(args.path, args.kind, kind_key="--kind").subgrid(parse_keep(args.keep))
    ds = ds.at_resolution(args.resolution, "--resolution")
    write_grid_npz(args.out, ds)
    sizes = ", ".join(f"{n}={s}" for n, s in zip(ds.factor_names, ds.factor_sizes))
    print(f"wrote {args.out}: {len(ds)} images {ds.resolution}x{ds.resolution} ({sizes})")
    return 0
