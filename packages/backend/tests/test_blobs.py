"""Blob codecs: every codec ever written decodes to the exact bytes, the shipped dictionary
is the one its codec name promises."""

from __future__ import annotations

import hashlib

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher_backend import blobs


def test_shipped_dictionary_is_what_its_codec_names() -> None:
    d = blobs._dictionary("zstd-d1")
    # the id written by scripts/train_zstd_dict.py: a frame names the dictionary it needs
    assert d.dict_id() == 0x4A570001
    frame = blobs.dict_compressor().compress(b"#include <stdio.h>\nint main(void) {}\n" * 4)
    assert zstandard.get_frame_parameters(frame).dict_id == 0x4A570001


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3 * blobs.DICT_MAX) | st.text(max_size=20_000).map(str.encode))
def test_pack_and_decode_round_trip(data: bytes) -> None:
    blob = blobs.pack_blob(hashlib.sha256(data).hexdigest(), data)
    assert blob.size == len(data)
    if len(data) < blobs.MIN_COMPRESS:
        assert blob.codec == "raw"
    elif blob.codec != "raw":
        assert blob.codec == ("zstd-d1" if len(data) <= blobs.DICT_MAX else "zstd")
        assert len(blob.data) < len(data)
    assert blobs.decode_blob(blob.codec, blob.data, blob.size) == data


def test_blobs_stored_before_the_dictionary_still_decode() -> None:
    # rows written by earlier versions: plain zstd frames of small files
    data = b"print('hello')\n" * 30
    old = zstandard.ZstdCompressor(level=1).compress(data)
    assert blobs.decode_blob("zstd", old, len(data)) == data


def test_unknown_codec_is_an_error() -> None:
    with pytest.raises(ValueError, match="zstd-d99"):
        blobs.decode_blob("zstd-d99", b"\x28\xb5\x2f\xfd", 1)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=blobs.DICT_MAX), max_size=8))
def test_compressing_many_gives_the_frames_of_one_at_a_time(datas: list[bytes]) -> None:
    one_by_one = [blobs.dict_compressor().compress(d) for d in datas]
    assert blobs.dict_compress_many(datas) == one_by_one
    dec = zstandard.ZstdDecompressor(dict_data=blobs._dictionary(blobs.DICT_CODEC))
    assert [dec.decompress(p) for p in blobs.dict_compress_many(datas)] == datas
