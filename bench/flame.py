"""Read a py-spy flame graph (bench/profiles/*.svg) as text: where the samples went.

    python -m bench.flame bench/profiles/hot-32-notify_svc.svg [--top 25] [--match aiormq ...]

Prints the functions with the most samples of their own (self) and the most under
them (inclusive, each stack counted once), and for each ``--match`` substring the
share of samples with a matching frame anywhere on the stack. The SVG keeps every
frame's depth and sample span (``y``, ``fg:x``, ``fg:w``), which is all this needs.
"""

import argparse
import html
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_FRAME = re.compile(
    r"<g><title>(?P<name>[^<]*?) \([\d,]+ samples?, [\d.]+%\)</title>"
    r'<rect x="[^"]*" y="(?P<y>\d+)"[^>]*fg:x="(?P<x>\d+)" fg:w="(?P<w>\d+)"'
)


@dataclass(frozen=True)
class Frame:
    name: str
    depth: int
    start: int
    width: int


def frames(svg: str) -> list[Frame]:
    found = [
        (html.unescape(m["name"]), int(m["y"]), int(m["x"]), int(m["w"]))
        for m in _FRAME.finditer(svg)
    ]
    ys = sorted({y for _, y, _, _ in found})
    depth = {y: i for i, y in enumerate(ys)}
    return [Frame(name, depth[y], x, w) for name, y, x, w in found]


def summarise(found: list[Frame]) -> tuple[int, Counter[str], Counter[str]]:
    """(total samples, self samples by function, inclusive samples by function)."""
    by_depth: dict[int, list[Frame]] = {}
    for frame in found:
        by_depth.setdefault(frame.depth, []).append(frame)
    total = sum(f.width for f in by_depth.get(0, []))
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frame in found:
        children = sum(
            c.width
            for c in by_depth.get(frame.depth + 1, [])
            if frame.start <= c.start < frame.start + frame.width
        )
        own[frame.name] += frame.width - children
        inclusive[frame.name] += frame.width
    return total, own, inclusive


def matching_share(found: list[Frame], pattern: str) -> int:
    """Samples with a frame containing ``pattern`` on their stack (outermost match counted)."""
    matches = sorted((f for f in found if pattern in f.name), key=lambda f: f.depth)
    covered: list[tuple[int, int]] = []
    samples = 0
    for frame in matches:
        if any(s <= frame.start < e for s, e in covered):
            continue
        covered.append((frame.start, frame.start + frame.width))
        samples += frame.width
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("svg", type=Path, nargs="+")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--match", action="append", default=[])
    args = parser.parse_args()
    for path in args.svg:
        found = frames(path.read_text())
        total, own, inclusive = summarise(found)
        print(f"== {path} ({total} samples)")
        for pattern in args.match:
            print(f"  stacks with {pattern!r}: {matching_share(found, pattern) / total:.1%}")
        print("  self:")
        for name, n in own.most_common(args.top):
            print(f"    {n / total:6.1%}  {name}")
        print("  inclusive:")
        for name, n in inclusive.most_common(args.top):
            print(f"    {n / total:6.1%}  {name}")


if __name__ == "__main__":
    main()
