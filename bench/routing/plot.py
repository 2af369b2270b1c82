"""PNG plots of per-provider traffic share over time, with no plotting library.

A small raster canvas, a 5×7 bitmap font and a PNG encoder (zlib) are all it takes for
stacked share bars, and they keep the benchmark free of a heavy dependency.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Mapping, Sequence

from bench.routing.scenario import Scenario

Color = tuple[int, int, int]
PALETTE: tuple[Color, ...] = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
                              (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127))
WHITE, BLACK, GREY, LIGHT = (255, 255, 255), (0, 0, 0), (90, 90, 90), (235, 235, 235)

_GLYPHS = {
    "a": ".....|.....|.###.|....#|.####|#...#|.####", "b": "#....|#....|#.##.|##..#|#...#|#...#|####.",
    "c": ".....|.....|.###.|#....|#....|#...#|.###.", "d": "....#|....#|.##.#|#..##|#...#|#...#|.####",
    "e": ".....|.....|.###.|#...#|#####|#....|.###.", "f": "..##.|.#..#|.#...|###..|.#...|.#...|.#...",
    "g": ".....|.####|#...#|#...#|.####|....#|.###.", "h": "#....|#....|#.##.|##..#|#...#|#...#|#...#",
    "i": "..#..|.....|.##..|..#..|..#..|..#..|.###.", "j": "...#.|.....|..##.|...#.|...#.|#..#.|.##..",
    "k": "#....|#....|#..#.|#.#..|##...|#.#..|#..#.", "l": ".##..|..#..|..#..|..#..|..#..|..#..|.###.",
    "m": ".....|.....|##.#.|#.#.#|#.#.#|#...#|#...#", "n": ".....|.....|#.##.|##..#|#...#|#...#|#...#",
    "o": ".....|.....|.###.|#...#|#...#|#...#|.###.", "p": ".....|.....|####.|#...#|####.|#....|#....",
    "q": ".....|.....|.##.#|#..##|.####|....#|....#", "r": ".....|.....|#.##.|##..#|#....|#....|#....",
    "s": ".....|.....|.###.|#....|.###.|....#|####.", "t": ".#...|.#...|###..|.#...|.#...|.#..#|..##.",
    "u": ".....|.....|#...#|#...#|#...#|#..##|.##.#", "v": ".....|.....|#...#|#...#|#...#|.#.#.|..#..",
    "w": ".....|.....|#...#|#...#|#.#.#|#.#.#|.#.#.", "x": ".....|.....|#...#|.#.#.|..#..|.#.#.|#...#",
    "y": ".....|.....|#...#|#...#|.####|....#|.###.", "z": ".....|.....|#####|...#.|..#..|.#...|#####",
    "0": ".###.|#...#|#..##|#.#.#|##..#|#...#|.###.", "1": "..#..|.##..|..#..|..#..|..#..|..#..|.###.",
    "2": ".###.|#...#|....#|...#.|..#..|.#...|#####", "3": "#####|...#.|..#..|...#.|....#|#...#|.###.",
    "4": "...#.|..##.|.#.#.|#..#.|#####|...#.|...#.", "5": "#####|#....|####.|....#|....#|#...#|.###.",
    "6": "..##.|.#...|#....|####.|#...#|#...#|.###.", "7": "#####|....#|...#.|..#..|.#...|.#...|.#...",
    "8": ".###.|#...#|#...#|.###.|#...#|#...#|.###.", "9": ".###.|#...#|#...#|.####|....#|...#.|.##..",
    " ": ".....|.....|.....|.....|.....|.....|.....", "_": ".....|.....|.....|.....|.....|.....|#####",
    "-": ".....|.....|.....|#####|.....|.....|.....", ".": ".....|.....|.....|.....|.....|.##..|.##..",
    ":": ".....|.##..|.##..|.....|.##..|.##..|.....", ";": ".....|.##..|.##..|.....|.##..|..#..|.#...", "%": "##...|##..#|...#.|..#..|.#...|#..##|...##",
    "(": "...#.|..#..|.#...|.#...|.#...|..#..|...#.", ")": ".#...|..#..|...#.|...#.|...#.|..#..|.#...",
    "/": ".....|....#|...#.|..#..|.#...|#....|.....", ",": ".....|.....|.....|.....|.##..|..#..|.#...",
    "=": ".....|.....|#####|.....|#####|.....|.....", "+": ".....|..#..|..#..|#####|..#..|..#..|.....",
    "?": ".###.|#...#|....#|...#.|..#..|.....|..#..",
}
_FONT = {ch: [row for row in spec.split("|")] for ch, spec in _GLYPHS.items()}


class Canvas:
    def __init__(self, width: int, height: int, background: Color = WHITE) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(background) * (width * height))

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """Fill [x0, x1) × [y0, y1), clipped."""
        x0, x1 = max(0, x0), min(self.width, x1)
        y0, y1 = max(0, y0), min(self.height, y1)
        if x0 >= x1 or y0 >= y1:
            return
        run = bytes(color) * (x1 - x0)
        for y in range(y0, y1):
            start = (y * self.width + x0) * 3
            self.pixels[start:start + len(run)] = run

    def text(self, x: int, y: int, text: str, color: Color = BLACK, scale: int = 1) -> int:
        """Draw `text` with its top-left at (x, y); returns the x after it."""
        for ch in text.lower():
            glyph = _FONT.get(ch, _FONT["?"])
            for gy, row in enumerate(glyph):
                for gx, cell in enumerate(row):
                    if cell == "#":
                        self.rect(x + gx * scale, y + gy * scale, x + (gx + 1) * scale, y + (gy + 1) * scale, color)
            x += 6 * scale
        return x

    def png(self) -> bytes:
        stride = self.width * 3
        raw = b"".join(b"\x00" + bytes(self.pixels[y * stride:(y + 1) * stride]) for y in range(self.height))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
                + chunk(b"IEND", b""))


def write_share_plot(path: Path, scenario: Scenario,
                     shares: Mapping[str, tuple[Sequence[float], Mapping[str, Sequence[float]]]]) -> None:
    """One panel per strategy: stacked share of attempts per provider over simulated time,
    dashed lines where a provider's behaviour changes (its phases)."""
    names = [p.name for p in scenario.providers]
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    columns = 2
    panel_w, panel_h, gap_x, gap_y, margin = 440, 120, 60, 52, 40
    rows = (len(shares) + columns - 1) // columns
    top = 96
    width = margin * 2 + columns * panel_w + (columns - 1) * gap_x
    height = top + rows * (panel_h + gap_y) + 10
    canvas = Canvas(width, height)
    canvas.text(margin, 14, f"traffic share per provider over time: {scenario.name}", BLACK, 2)
    x = margin
    for name in names:
        canvas.rect(x, 50, x + 16, 66, colors[name])
        x = canvas.text(x + 22, 52, name, BLACK, 2) + 24
    canvas.text(margin, 76, f"x: simulated seconds (0-{scenario.duration_s:.0f}); y: share of attempts "
                f"(0-100%); dashed: phase changes", GREY, 1)
    changes = sorted({t for p in scenario.providers for ph in p.phases for t in (ph.start_s, ph.end_s)
                      if 0 < t < scenario.duration_s})
    for index, (strategy, (mids, share)) in enumerate(shares.items()):
        col, row = index % columns, index // columns
        x0 = margin + col * (panel_w + gap_x)
        y0 = top + row * (panel_h + gap_y) + 20
        canvas.text(x0, y0 - 18, strategy, BLACK, 2)
        canvas.rect(x0, y0, x0 + panel_w, y0 + panel_h, LIGHT)
        buckets = len(mids)
        for b in range(buckets):
            bx0 = x0 + round(b * panel_w / buckets)
            bx1 = x0 + round((b + 1) * panel_w / buckets)
            y = float(y0 + panel_h)
            for name in names:
                h = share[name][b] * panel_h if name in share else 0.0
                canvas.rect(bx0, round(y - h), bx1, round(y), colors[name])
                y -= h
        for t in changes:
            cx = x0 + round(t / scenario.duration_s * panel_w)
            for dy in range(0, panel_h, 6):
                canvas.rect(cx, y0 + dy, cx + 1, y0 + dy + 3, BLACK)
        for edge in ((x0 - 1, y0 - 1, x0 + panel_w + 1, y0), (x0 - 1, y0 + panel_h, x0 + panel_w + 1, y0 + panel_h + 1),
                     (x0 - 1, y0, x0, y0 + panel_h), (x0 + panel_w, y0, x0 + panel_w + 1, y0 + panel_h)):
            canvas.rect(*edge, GREY)
        canvas.text(x0, y0 + panel_h + 4, "0", GREY)
        label = f"{scenario.duration_s:.0f}"
        canvas.text(x0 + panel_w - 6 * len(label), y0 + panel_h + 4, label, GREY)
        mid = f"{scenario.duration_s / 2:.0f}"
        canvas.text(x0 + panel_w // 2 - 3 * len(mid), y0 + panel_h + 4, mid, GREY)
    path.write_bytes(canvas.png())
