#!/usr/bin/env python3
"""Draws assets/icon.png (128x128 RGBA): a page of text lines under a magnifying glass, the
app's job in one picture. Standard library only, so it runs on a fresh machine."""
import math, struct, zlib, pathlib

N = 128

def coverage(d):
    """Anti-aliased edge: 1 inside (d < 0), 0 outside, linear across one pixel."""
    return max(0.0, min(1.0, 0.5 - d))

def rounded_box(x, y, x0, y0, x1, y1, r):
    cx, cy = min(max(x, x0 + r), x1 - r), min(max(y, y0 + r), y1 - r)
    return math.hypot(x - cx, y - cy) - r

def pixel(x, y):
    layers = []
    # background tile
    layers.append(((33, 64, 122), coverage(rounded_box(x, y, 4, 4, 124, 124, 22))))
    # page
    layers.append(((240, 244, 250), coverage(rounded_box(x, y, 24, 18, 88, 104, 6))))
    for row in range(5):
        top = 32 + row * 13
        width = 48 if row % 2 == 0 else 38
        layers.append(((150, 165, 190), coverage(rounded_box(x, y, 32, top, 32 + width, top + 5, 2.5))))
    # magnifier: ring, lens tint, handle
    cx, cy, r = 80, 72, 22
    d = math.hypot(x - cx, y - cy)
    layers.append(((255, 200, 61), coverage(abs(d - r) - 4)))
    # handle along the diagonal, from the ring outwards
    ax, ay = cx + r * math.sqrt(0.5) + 2, cy + r * math.sqrt(0.5) + 2
    bx, by = 114, 106
    vx, vy = bx - ax, by - ay
    u = max(0.0, min(1.0, ((x - ax) * vx + (y - ay) * vy) / (vx * vx + vy * vy)))
    dh = math.hypot(x - (ax + u * vx), y - (ay + u * vy)) - 6
    layers.append(((255, 200, 61), coverage(dh)))
    rgb, alpha = (0, 0, 0), 0.0
    for colour, a in layers:
        if a <= 0:
            continue
        out_a = a + alpha * (1 - a)
        rgb = tuple((c * a + o * alpha * (1 - a)) / out_a for c, o in zip(colour, rgb))
        alpha = out_a
    return (*[round(c) for c in rgb], round(alpha * 255))

def png(width, height, rows):
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
    raw = b"".join(b"\0" + bytes(v for px in row for v in px) for row in rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))

rows = [[pixel(x + 0.5, y + 0.5) for x in range(N)] for y in range(N)]
out = pathlib.Path(__file__).resolve().parent.parent / "assets" / "icon.png"
out.write_bytes(png(N, N, rows))
print(f"wrote {out}")
