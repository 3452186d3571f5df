"""Personas and cards come from anyone: reading one is bounded in time and memory, and every fault is an error
naming the file (and, in a PNG, the chunk), never a hang or a traceback (issue 13, items 10 and 11)."""

from __future__ import annotations

import base64
import json
import os
import struct
import threading
import zlib
from pathlib import Path

import pytest

from tests.bounded import measure
from xdai.persona import (
    PersonaError,
    PersonaLimits,
    check_persona_file,
    placeholder_png,
    png_bytes,
    png_chunks,
)
from xdai.persona.card import read_card
from xdai.persona.limits import MiB

BOUND_S, BOUND_MB = 2.0, 200.0


def alias_bomb(levels: int, fan: int = 9) -> str:
    """A persona whose `extensions` hold `levels` of anchors, each listing the previous one `fan` times: under
    600 bytes that a tree walk would expand to fan**levels nodes (4.8 million for 7 levels, 387 million for 9)."""
    lines = ["name: bomb", "extensions:", '  a0: &a0 ["lol"]']
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fan)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [7, 9])
def test_an_alias_bomb_persona_is_refused_in_under_2_s_and_200_mb(tmp_path: Path, levels: int) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(levels), encoding="utf-8")
    assert path.stat().st_size < 600
    m = measure("result = [str(i) for i in check_persona_file(path)]",
                setup=f"from xdai.persona import check_persona_file\npath = {str(path)!r}")
    assert m.error is None
    # a5's aliases of a4 take the expansion past 100,000 nodes: refused at the first alias that does
    assert m.result == [f"{path}:8:42: YAML refused: aliases expand to more than 100,000 nodes (at *a4, 113,272 so "
                         "far, from 15 written): an alias bomb? write the data out instead of nesting anchors"]
    assert m.seconds < BOUND_S and m.rss_mb < BOUND_MB, m


def test_persona_check_reports_the_bomb_and_fails(cli, tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(7), encoding="utf-8")
    result = cli("check", str(path))
    assert result.exit_code == 1
    assert f"{path}:8:42: YAML refused: aliases expand to more than 100,000 nodes" in result.output
    assert result.output.rstrip().endswith("persona check: 1 file, 1 error, 0 warnings: FAILED")


def test_anchors_used_a_few_times_are_fine(write_yaml) -> None:
    path = write_yaml("""
        name: ok
        extensions:
          base: &b {mood: calm, tags: [a, b]}
          morning: {<<: *b, time: am}
          evening: [*b, *b]
        """)
    assert check_persona_file(path) == []


def test_nesting_past_64_levels_is_refused_at_its_mark(write_yaml) -> None:
    path = write_yaml("name: deep\nextensions: {a: " + "[" * 100_000 + "]" * 100_000 + "}\n")
    assert [str(i) for i in check_persona_file(path)] == [f"{path}:2:79: YAML refused: nested deeper than 64 levels"]


def test_a_persona_file_over_the_size_limit_is_refused_unread(tmp_path: Path, cli) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as fh:  # sparse: 50 MiB on paper, nothing on disk
        fh.write(b"name: big\n")
        fh.truncate(50 * MiB)
    expected = f"{big}: 50.0 MiB, over the 8.0 MiB limit for a persona file (raise it with --max-bytes if the file is trusted)"
    assert [str(i) for i in check_persona_file(big)] == [expected]
    assert expected in cli("check", str(big)).output
    small = tmp_path / "small.yaml"
    small.write_text("name: small\n" + "# padding\n" * 100, encoding="utf-8")
    assert check_persona_file(small, limits=PersonaLimits(persona_bytes=500))[0].message.startswith(
        "1,012 bytes, over the 500 bytes limit")
    assert "over the 500 bytes limit" in cli("check", str(small), "--max-bytes", "500").output


def test_a_fifo_named_as_a_persona_or_card_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "persona.yaml"
    os.mkfifo(fifo)
    out: dict[str, object] = {}

    def run() -> None:
        out["persona"] = [str(i) for i in check_persona_file(fifo)]
        try:
            read_card(fifo)
        except PersonaError as exc:
            out["card"] = str(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # unblock the reader before failing, so that the session can end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert not worker.is_alive(), "reading a FIFO blocked"
    assert out == {"persona": [f"{fifo}: not a regular file: a persona file is a plain file"],
                   "card": f"{fifo}: not a regular file: a card is a plain file"}


# ---------------------------------------------------------------------------------------------------------------
# PNG cards


def _inflates_to_a_gibibyte() -> bytes:
    """A valid zlib stream of ~1 MB that inflates to 1 GiB of "A" (base64-alphabet text): one level-9 segment
    of 1 MiB, ended by a full flush so that it depends on nothing before it, repeated 1,024 times."""
    block = b"A" * MiB
    c = zlib.compressobj(9)
    segment = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(1024):
        adler = zlib.adler32(block, adler)
    return segment[:2] + segment[2:] * 1024 + b"\x03\x00" + adler.to_bytes(4, "big")


def card_png(path: Path, *chunks: tuple[bytes, bytes]) -> Path:
    """A placeholder image with `chunks` before IEND; the first text chunk lands at byte 33 (after IHDR)."""
    image = png_chunks(placeholder_png("x", size=8))
    path.write_bytes(png_bytes([image[0], *chunks, *image[1:]]))
    return path


def b64(value: object) -> bytes:
    return base64.b64encode(json.dumps(value).encode())


def test_a_ztxt_card_inflating_to_1_gib_is_refused_in_under_2_s_and_200_mb(tmp_path: Path) -> None:
    stream = _inflates_to_a_gibibyte()
    assert zlib.decompressobj().decompress(stream, 4096) == b"A" * 4096 and len(stream) < 1_100_000
    path = card_png(tmp_path / "zip_bomb.png", (b"zTXt", b"chara\0\0" + stream))
    m = measure("read_card(path)", setup=f"from xdai.persona.card import read_card\npath = {str(path)!r}")
    assert m.error == (f"xdai.persona.schema.PersonaError: {path}: PNG zTXt chunk 'chara' at byte 33: inflates to "
                       "more than the 16,777,216-byte limit")
    assert m.seconds < BOUND_S and m.rss_mb < BOUND_MB, m


def _itxt(flag: int, rest: bytes) -> bytes:
    return b"chara\0" + bytes([flag, 0]) + rest


CARD = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": "Ok"}}
DEEP = "[" * 100_000 + "]" * 100_000

MALFORMED = {
    "text_without_nul": ((b"tEXt", b"chara" + b64(CARD)),
                         "PNG tEXt chunk at byte 33 (keyword 'chara'?): no NUL after the keyword, so it holds no text"),
    "bare_keyword": ((b"tEXt", b"chara"),
                     "PNG tEXt chunk at byte 33 (keyword 'chara'?): no NUL after the keyword, so it holds no text"),
    "itxt_without_fields": ((b"iTXt", _itxt(0, b64(CARD))), "PNG iTXt chunk 'chara' at byte 33: malformed iTXt: "
                            "the language tag and translated keyword must each end with a NUL"),
    "itxt_truncated": ((b"iTXt", b"chara\0"), "PNG iTXt chunk 'chara' at byte 33: malformed iTXt: no compression "
                       "flag and method"),
    "itxt_bad_flag": ((b"iTXt", _itxt(7, b"\0\0" + b64(CARD))),
                      "PNG iTXt chunk 'chara' at byte 33: malformed iTXt: compression flag 7, expected 0 or 1"),
    "itxt_bad_zlib": ((b"iTXt", _itxt(1, b"\0\0" + b"not zlib at all")),
                      "PNG iTXt chunk 'chara' at byte 33: bad zlib data (Error -3 while decompressing data: "
                      "incorrect header check)"),
    "ztxt_bad_zlib": ((b"zTXt", b"chara\0\0" + zlib.compress(b64(CARD))[:-9]),
                      "PNG zTXt chunk 'chara' at byte 33: truncated zlib data"),
    "ztxt_bad_method": ((b"zTXt", b"chara\0\x01" + zlib.compress(b64(CARD))),
                        "PNG zTXt chunk 'chara' at byte 33: unknown compression method 1 (PNG has only 0, zlib)"),
    "not_base64": ((b"tEXt", "chara\0é!".encode("latin-1")), "PNG tEXt chunk 'chara' at byte 33: not base64"),
    "deep_json": ((b"tEXt", b"chara\0" + base64.b64encode(DEEP.encode())),
                  "PNG tEXt chunk 'chara' at byte 33: JSON nested deeper than 64 levels"),
    "bad_json": ((b"tEXt", b"chara\0" + base64.b64encode(b'{"spec": ')),
                 "PNG tEXt chunk 'chara' at byte 33: JSON: Expecting value at 1:10"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_card_chunks_are_errors_naming_file_and_chunk(tmp_path: Path, cli, case: str) -> None:
    chunk, expected = MALFORMED[case]
    path = card_png(tmp_path / f"{case}.png", chunk)
    with pytest.raises(PersonaError) as err:
        read_card(path)
    assert str(err.value).startswith(f"{path}: {expected}")
    result = cli("import", str(path))  # through the CLI: a message and exit 1, no traceback
    assert result.exit_code == 1 and f"cannot import {path}:\n{path}: {expected}" in result.output


def test_a_deep_json_card_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text('{"spec": "chara_card_v2", "data": ' + DEEP + "}")
    with pytest.raises(PersonaError, match=rf"^{path}: JSON nested deeper than 64 levels$"):
        read_card(path)
    path.write_text('{"spec": "chara_card_v2", "data": ' + "[" * 60 + "]" * 60 + "}")  # within bounds: checked
    with pytest.raises(PersonaError, match="data: expected a JSON object, got list"):
        from xdai.persona import import_card

        import_card(path)


def test_card_file_and_text_sizes_are_capped(tmp_path: Path, cli) -> None:
    huge = tmp_path / "huge.png"
    with huge.open("wb") as fh:  # sparse: 168 MiB on paper
        fh.write(placeholder_png("x", size=8))
        fh.truncate(168 * MiB)
    with pytest.raises(PersonaError, match=r"huge.png: 168.0 MiB, over the 64.0 MiB limit for a card \(raise it "):
        read_card(huge)
    ok = card_png(tmp_path / "ok.png", (b"tEXt", b"chara\0" + b64(CARD)))
    assert read_card(ok) == CARD
    with pytest.raises(PersonaError, match="over the 100 bytes limit for a card"):
        read_card(ok, PersonaLimits(card_bytes=100))
    refused = cli("import", str(ok), "--max-bytes", "100")
    assert refused.exit_code == 1 and "over the 100 bytes limit for a card" in refused.output
    with pytest.raises(PersonaError, match="tEXt chunk 'chara' at byte 33: text of 96 bytes, over the 50-byte"):
        read_card(ok, PersonaLimits(card_text_bytes=50))
    itxt = card_png(tmp_path / "itxt.png", (b"iTXt", _itxt(1, b"\0\0" + zlib.compress(b64(CARD)))))
    assert read_card(itxt) == CARD
    with pytest.raises(PersonaError, match="iTXt chunk 'chara' at byte 33: inflates to more than the 50-byte"):
        read_card(itxt, PersonaLimits(card_text_bytes=50))
    crc = bytearray(ok.read_bytes())
    crc[33 + 8 + 3] ^= 1
    ok.write_bytes(bytes(crc))
    with pytest.raises(PersonaError, match=r"PNG chunk b'tEXt' at byte 33 has a bad CRC"):
        read_card(ok)
    assert struct.unpack(">I", crc[33:37])[0] == len(b"chara\0" + b64(CARD))
