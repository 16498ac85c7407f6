"""Philox4x32 against Random123's known-answer vectors, the documented bit-to-value mapping against
an independent Python implementation, and the cosine and the distributions' shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import klflow as flow
from klflow.kernels import philox

# Random123's kat_vectors: name, rounds, counter (4 words), key (2 words), expected (4 words).
KAT_VECTORS = """
philox4x32 7 00000000 00000000 00000000 00000000 00000000 00000000 5f6fb709 0d893f64 4f121f81 4f730a48
philox4x32 7 ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff 5207ddc2 45165e59 4d8ee751 8c52f662
philox4x32 7 243f6a88 85a308d3 13198a2e 03707344 a4093822 299f31d0 4dfccaba 190a87f0 c47362ba b6b5242a
philox4x32 10 00000000 00000000 00000000 00000000 00000000 00000000 6627e8d5 e169c58d bc57ac4c 9b00dbd8
philox4x32 10 ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff 408f276d 41c83b0e a20bc7c6 6d5451fd
philox4x32 10 243f6a88 85a308d3 13198a2e 03707344 a4093822 299f31d0 d16cfe09 94fdcceb 5001e420 24126ea1
"""
KATS = [line.split() for line in KAT_VECTORS.strip().splitlines()]
MASK = 0xFFFFFFFF


def reference_philox(counter, key, rounds):
    """Random123's Philox4x32 as its paper states it: round 1 with the key, then bump and round."""

    def one_round(c, k):
        p0 = 0xD2511F53 * c[0]
        p1 = 0xCD9E8D57 * c[2]
        return [(p1 >> 32) ^ c[1] ^ k[0], p1 & MASK, (p0 >> 32) ^ c[3] ^ k[1], p0 & MASK]

    c, k = list(counter), list(key)
    c = one_round(c, k)
    for _ in range(rounds - 1):
        k = [(k[0] + 0x9E3779B9) & MASK, (k[1] + 0xBB67AE85) & MASK]
        c = one_round(c, k)
    return c


@pytest.mark.parametrize("row", KATS, ids=[f"{r[1]}-rounds-{r[2]}" for r in KATS])
def test_known_answers(row):
    rounds = int(row[1])
    words = [int(w, 16) for w in row[2:]]
    counter, key, expected = words[:4], words[4:6], words[6:]
    assert [int(w) for w in philox.philox4x32(*counter, *key, rounds)] == expected
    assert reference_philox(counter, key, rounds) == expected


@settings(deadline=None)  # the first example compiles the kernel
@given(st.lists(st.integers(0, MASK), min_size=6, max_size=6))
def test_compiled_block_matches_the_reference(words):
    assert [int(w) for w in philox.philox4x32(*words, 10)] == reference_philox(words[:4], words[4:], 10)


def reference_uniform(seed, call, index, bits):
    w = reference_philox([index & MASK, index >> 32, call & MASK, call >> 32], [seed & MASK, seed >> 32], 10)
    if bits == 53:
        return ((w[0] << 21) | (w[1] >> 11)) / 2.0**53
    return (w[0] >> (32 - bits)) / 2.0**bits


def reference_normal(seed, call, index):
    w = reference_philox([index & MASK, index >> 32, call & MASK, call >> 32], [seed & MASK, seed >> 32], 10)
    u1 = (((w[0] << 21) | (w[1] >> 11)) + 1) / 2.0**53
    u2 = ((w[2] << 21) | (w[3] >> 11)) / 2.0**53
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@pytest.mark.parametrize(
    "dtype,bits", [(flow.float64, 53), (flow.float32, 24), (flow.float16, 11)], ids=["f64", "f32", "f16"]
)
@pytest.mark.parametrize("seed", [0, 1, 2**40 + 7, 2**64 - 1])
def test_uniform_values_follow_the_documented_mapping(dtype, bits, seed):
    flow.manual_seed(seed)
    flow.rand(1)  # call 0
    values = flow.rand(3, 5, dtype=dtype).numpy()  # call 1, logical indices 0..14
    expected = [reference_uniform(seed % 2**64, 1, i, bits) for i in range(15)]
    np.testing.assert_array_equal(values.reshape(-1).astype(np.float64), expected)
    assert values.dtype == dtype.numpy


@pytest.mark.parametrize("seed", [0, 12345, 2**63 + 11])
def test_normal_values_follow_the_documented_mapping(seed):
    flow.manual_seed(seed)
    values = flow.randn(64, dtype=flow.float64).numpy()
    expected = np.array([reference_normal(seed, 0, i) for i in range(64)])
    # The reference rounds 2π·u2 before its cosine (up to 4.4e-16 absolute) and uses libm's log.
    np.testing.assert_allclose(values, expected, rtol=4e-15, atol=2e-15)


def test_normal_float32_is_the_float64_value_rounded_once():
    flow.manual_seed(5)
    wide = flow.randn(500, dtype=flow.float64).numpy()
    flow.manual_seed(5)
    narrow = flow.randn(500, dtype=flow.float32).numpy()
    flow.manual_seed(5)
    half = flow.randn(500, dtype=flow.float16).numpy()
    np.testing.assert_array_equal(narrow, wide.astype(np.float32))
    np.testing.assert_array_equal(half, wide.astype(np.float16))


@settings(deadline=None)  # the first example compiles the kernel
@given(st.integers(0, 2**53 - 1))
@example(0)
@example(2**51)  # u = 1/4: cos is 0
@example(2**52)  # u = 1/2: cos is -1
@example(2**53 - 1)
def test_cosine_against_the_true_value(bits):
    u = bits / 2.0**53
    # 2π·u rounds by at most half an ulp of 2π; cos has slope at most 1 there.
    exact = math.cos(2.0 * math.pi * u)
    assert abs(philox.cos_two_pi(u) - exact) <= 4 * 2.0**-53 + abs(2.0 * math.pi * u) * 2.0**-53


def test_cosine_is_exact_at_the_quarter_turns():
    assert philox.cos_two_pi(0.0) == 1.0
    assert philox.cos_two_pi(0.5) == -1.0
    assert philox.cos_two_pi(0.25) == 0.0 and philox.cos_two_pi(0.75) == 0.0


@pytest.mark.parametrize("dtype", [flow.float32, flow.float64, flow.float16])
def test_uniform_moments(dtype):
    flow.manual_seed(2024)
    u = flow.rand(200_000, dtype=dtype).numpy().astype(np.float64)
    assert u.min() >= 0.0 and u.max() < 1.0
    n = u.size
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(u.var() - 1 / 12) < 5 * math.sqrt(1 / 180 / n)
    counts, _ = np.histogram(u, bins=20, range=(0.0, 1.0))
    chi2 = ((counts - n / 20) ** 2 / (n / 20)).sum()
    assert chi2 < 60  # 19 degrees of freedom: p < 1e-5 above 50


def test_normal_moments_and_tails():
    flow.manual_seed(7)
    z = flow.randn(200_000, dtype=flow.float64).numpy()
    n = z.size
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1.0) < 5 * math.sqrt(2 / n)
    assert abs((z**3).mean()) < 5 * math.sqrt(15 / n)
    assert abs((z**4).mean() - 3.0) < 5 * math.sqrt(96 / n)
    below = (z < 1.959963984540054).mean()
    assert abs(below - 0.975) < 5 * math.sqrt(0.975 * 0.025 / n)
    assert np.isfinite(z).all()


def test_low_precision_uniforms_lie_on_their_grid():
    flow.manual_seed(1)
    half = flow.rand(4096, dtype=flow.float16).numpy().astype(np.float64)
    assert np.all(half * 2**11 == np.floor(half * 2**11))
    assert len(np.unique(half)) > 1500  # of 2048 possible values


@st.composite
def boxes(draw):
    """A logical shape (0 to 3 dims) and a sub-box of it, as a component's [start, stop) ranges."""
    shape = draw(st.lists(st.integers(0, 7), min_size=0, max_size=3))
    ranges = []
    for n in shape:
        start = draw(st.integers(0, n))
        ranges.append((start, draw(st.integers(start, n))))
    return tuple(shape), ranges


@settings(deadline=None)  # the first example of each case compiles its kernel
@given(boxes(), st.booleans(), st.sampled_from([53, 24, 11, 8]), st.data())
@example(((3, 5), [(1, 3), (2, 5)]), False, 24, None)
@example(((), []), True, 53, None)
def test_a_component_holds_its_slice_of_the_logical_value(box, normal, bits, data):
    from klflow.ops.creation import _strides

    shape, ranges = box
    args = (np.array([a for a, _ in ranges], np.int64), np.array([b - a for a, b in ranges], np.int64))
    n = int(np.prod([b - a for a, b in ranges], dtype=np.int64))
    whole = np.empty(int(np.prod(shape, dtype=np.int64)))
    kernel = philox.fill_kernel(normal, bits)
    key_and_call = (7, 1, 3, 0)
    kernel(whole, 0, whole.size, np.zeros(len(shape), np.int64), np.array(shape, np.int64), _strides(shape),
           *key_and_call)  # fmt: skip
    piece = np.full(n, np.nan)
    # Filled in two pieces cut anywhere, as the worker threads cut it.
    cut = data.draw(st.integers(0, n)) if data is not None else n // 2
    for lo, hi in ((0, cut), (cut, n)):
        kernel(piece, lo, hi, *args, _strides(shape), *key_and_call)
    expected = whole.reshape(shape)[tuple(slice(a, b) for a, b in ranges)].reshape(-1)
    assert piece.tobytes() == expected.tobytes()
