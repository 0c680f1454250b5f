"""The `gpuzarr` command: `info URL`, `demo` and `selfcheck`."""

from __future__ import annotations

import argparse
import sys

from .errors import GpuzarrError


def _positive_int(text: str) -> int:
    """argparse type: a count or size below 1 is a usage error (exit 2), not a traceback later."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpuzarr", description="Batched Zarr reader for GPU and CPU")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="describe an array or group")
    info.add_argument("url", help="path or fsspec URL of an array or group")
    info.add_argument("--no-count", action="store_true", help="skip listing stored chunks")
    demo = sub.add_parser("demo", help="write a sample sharded zstd array, read it back, verify, time")
    demo.add_argument("--size", type=_positive_int, default=4096, help="side of the square uint16 image")
    demo.add_argument("--repeats", type=_positive_int, default=5, help="timed full reads")
    demo.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    check = sub.add_parser("selfcheck", help="prove the GPU path on this machine: bit-identity with the CPU for "
                                             "every GPU codec, a corrupt stream refused, throughput; one verdict")
    check.add_argument("--size", type=_positive_int, default=512, help="side of the square test images (>= 64)")
    check.add_argument("--corpus", metavar="DIR", help="also read every array below DIR on the GPU and the CPU and "
                                                       "compare the bits (a source checkout writes the conformance "
                                                       "corpus with `python tests/corpus.py DIR`)")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            from .api import open as open_node
            from .info import describe

            print("\n".join(describe(open_node(args.url, device="cpu"), count_chunks=not args.no_count)))
            return 0
        if args.command == "selfcheck":
            from .selfcheck import main as selfcheck

            return selfcheck(size=max(64, args.size // 64 * 64), corpus=args.corpus)
        from .demo import run

        return run(args.size, args.repeats, args.device)
    except GpuzarrError as exc:
        print(f"gpuzarr: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
