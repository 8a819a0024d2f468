"""The reference 16-bit conversions (fastopt.reference.lowp): hand-worked bfloat16 bit patterns
(ties to even, carries into the exponent, overflow, subnormals, signed zero, NaN), and every
bfloat16/float16 value surviving the trip to float32 and back. torch's own conversions are
compared in test_torch_adapter.py. Cheap: the exhaustive checks are 65,536 values each."""
import numpy as np
import pytest

from fastopt.reference import lowp

ROUNDING = [                     # float32 bits -> bfloat16 bits, round to nearest even
    (0x3F800000, 0x3F80),        # 1.0
    (0x3F808000, 0x3F80),        # halfway, kept bit even: down
    (0x3F818000, 0x3F82),        # halfway, kept bit odd: up
    (0x3F808001, 0x3F81),        # just above halfway
    (0x3F807FFF, 0x3F80),        # just below halfway
    (0xBF808000, 0xBF80),        # ties to even on the magnitude, sign kept
    (0xBF818000, 0xBF82),
    (0x3FFF8000, 0x4000),        # the round-up carries into the exponent
    (0x7F7F7FFF, 0x7F7F),        # below halfway under the largest bfloat16
    (0x7F7FFFFF, 0x7F80),        # the largest float32 overflows to infinity
    (0x7F800000, 0x7F80),        # +inf
    (0xFF800000, 0xFF80),        # -inf
    (0x00000000, 0x0000),
    (0x80000000, 0x8000),        # -0.0
    (0x00000001, 0x0000),        # the smallest subnormal rounds to zero
    (0x00008000, 0x0000),        # subnormal halfway, even: down
    (0x00018000, 0x0002),        # subnormal halfway, odd: up
    (0x807FFFFF, 0x8080),        # the largest negative subnormal rounds to -FLT_MIN
    (0x7FC00000, 0x7FC0),        # NaNs, quiet or signalling, any sign or payload: 0x7FC0
    (0x7FC00001, 0x7FC0),
    (0xFFC00000, 0x7FC0),
    (0x7F800001, 0x7FC0),
    (0xFFFFFFFF, 0x7FC0),
]


@pytest.mark.parametrize("bits,expected", ROUNDING, ids=[f"{b:08x}" for b, _ in ROUNDING])
def test_float32_to_bfloat16_rounds_to_nearest_even(bits, expected):
    x = np.array(bits, np.uint32).view(np.float32)
    assert lowp.float32_to_bfloat16(x) == expected                       # 0-d
    strided = np.repeat(x[None], 6)[::2]                                  # non-contiguous
    assert (lowp.float32_to_bfloat16(strided) == expected).all()


def test_every_bfloat16_survives_float32_and_back():
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    wide = lowp.bfloat16_to_float32(bits)
    assert wide.dtype == np.float32
    np.testing.assert_array_equal(wide.view(np.uint32), bits.astype(np.uint32) << 16)
    back = lowp.float32_to_bfloat16(wide)
    nan = np.isnan(wide)
    np.testing.assert_array_equal(back[~nan], bits[~nan])
    assert (back[nan] == 0x7FC0).all() and nan.sum() == 2 * (0x80 - 1)
    np.testing.assert_array_equal(lowp.bfloat16_to_float32(bits.view(np.int16)), wide)


def test_every_float16_survives_float32_and_back():
    half = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    wide = lowp.widen(half, bfloat16=False)
    assert wide.dtype == np.float32
    back = lowp.float32_to_float16(wide)
    ok = ~np.isnan(half)
    np.testing.assert_array_equal(back[ok].view(np.uint16), half[ok].view(np.uint16))
    assert np.isnan(back[~ok]).all()


def test_store_rounded_writes_in_place():
    x = np.array([1.0, 1.00390625, 65520.0, -2.5], np.float32)   # 65520 rounds to fp16 inf
    bits = np.zeros(8, np.int16)[::2]
    lowp.store_rounded_(bits, x, bfloat16=True)
    np.testing.assert_array_equal(bits.view(np.uint16), lowp.float32_to_bfloat16(x))
    half = np.zeros(4, np.float16)
    lowp.store_rounded_(half, x, bfloat16=False)
    np.testing.assert_array_equal(half, np.array([1.0, 1.00390625, np.inf, -2.5], np.float16))
    with pytest.raises(TypeError, match="uint16 or int16"):
        lowp.store_rounded_(np.zeros(4, np.float32), x, bfloat16=True)
