"""``flowcraft graph --format png``: each renderer draws the graph, and a missing one is named."""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import pytest

pytest.importorskip("click", reason="click is a test dependency (extra 'cli')")

from click.testing import CliRunner

from flowcraft import inspector
from flowcraft.cli import cli
from flowcraft.inspector import STATE_COLOURS, PngRenderer, PngRendererUnavailable, svg_to_png

HERE = Path(__file__).parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# cli_sample:flow is two nodes in a column: 20 + 168 + 20 wide, 20 + 52 + 48 + 52 + 20 high.
WIDTH, HEIGHT = 208, 192
PENDING = tuple(int(STATE_COLOURS["pending"][i : i + 2], 16) for i in (1, 3, 5))


def _available(renderer: PngRenderer) -> bool:
    if renderer == "cairosvg":
        return inspector._cairosvg() is not None
    return inspector._chromium() is not None


def _pixels(data: bytes) -> tuple[int, int, list[tuple[int, ...]]]:
    """Width, height and RGB pixels of an 8-bit RGB or RGBA PNG (what both renderers write)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, chunk = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and colour in (2, 6), (depth, colour)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw, stride = zlib.decompress(idat), width * channels
    previous, pixels = bytearray(stride), list[tuple[int, ...]]()
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, up_left = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                line[i] = (
                    line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else up_left)
                ) & 0xFF
        pixels += [tuple(line[x : x + 3]) for x in range(0, stride, channels)]
        previous = line
    return width, height, pixels


@pytest.mark.parametrize("renderer", ["cairosvg", "chromium"])
def test_graph_png_with_each_renderer(renderer: PngRenderer, tmp_path: Path) -> None:
    if not _available(renderer):
        why = f"{renderer} is not installed here (pip install cairosvg; apt-get install chromium)"
        pytest.skip(reason=why)
    out = tmp_path / "graph.png"
    args = ["graph", "cli_sample:flow", "--format", "png", "--renderer", renderer, "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    width, height, pixels = _pixels(out.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    assert pixels[0] == (255, 255, 255)  # white background, not transparent black
    boxes = sum(1 for p in pixels if all(abs(a - b) <= 2 for a, b in zip(p, PENDING, strict=True)))
    # Two 168x52 boxes filled with the "pending" colour, less their borders and labels.
    assert boxes > 2 * 120 * 30


def test_graph_png_to_stdout_with_the_default_renderer() -> None:
    if not (_available("cairosvg") or _available("chromium")):
        why = "no PNG renderer installed (pip install cairosvg, or apt-get install chromium)"
        pytest.skip(reason=why)
    result = CliRunner().invoke(cli, ["graph", "cli_sample:flow", "--format", "png"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes.startswith(b"\x89PNG\r\n\x1a\n")


def test_without_a_renderer_the_error_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(inspector, "_cairosvg", lambda: None)
    monkeypatch.delenv("FLOWCRAFT_CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PngRendererUnavailable, match=r"flowcraft-core\[png\]"):
        svg_to_png("<svg/>")
    with pytest.raises(PngRendererUnavailable, match="CairoSVG is not usable"):
        svg_to_png("<svg/>", renderer="cairosvg")
    result = CliRunner().invoke(
        cli, ["graph", "cli_sample:flow", "--format", "png", "-o", str(tmp_path / "g.png")]
    )
    assert result.exit_code == 2
    assert "apt-get install chromium" in result.stderr and "pip install" in result.stderr
    assert not (tmp_path / "g.png").exists()


def test_a_renderer_that_fails_exits_1(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\necho 'cannot open display' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(inspector, "_cairosvg", lambda: None)
    monkeypatch.setenv("FLOWCRAFT_CHROMIUM", str(fake))
    out = tmp_path / "g.png"
    result = CliRunner().invoke(
        cli, ["graph", "cli_sample:flow", "--format", "png", "-o", str(out)]
    )
    assert result.exit_code == 1
    assert "exited with 3" in result.stderr and "cannot open display" in result.stderr
