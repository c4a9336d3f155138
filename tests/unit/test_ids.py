"""Identifiers: snowflakes unique and increasing, tokens long and only stored hashed."""

from __future__ import annotations

from chatd import ids


def test_snowflakes_strictly_increase_even_past_4096_in_one_millisecond() -> None:
    generator = ids.Snowflake(ids.worker_number("s1"))
    values = [generator.next() for _ in range(20_000)]
    assert values == sorted(values)
    assert len(set(values)) == len(values)
    assert all(v < 2**63 for v in values)


def test_two_servers_never_collide() -> None:
    a, b = ids.Snowflake(1), ids.Snowflake(2)
    assert not {a.next() for _ in range(5000)} & {b.next() for _ in range(5000)}


def test_tokens_carry_at_least_128_random_bits_and_hash_stably() -> None:
    tokens = {ids.new_token() for _ in range(1000)}
    assert len(tokens) == 1000
    assert all(len(t) >= 43 for t in tokens)  # 256 bits in URL-safe base64
    token = next(iter(tokens))
    assert ids.token_hash(token) == ids.token_hash(token) != token
