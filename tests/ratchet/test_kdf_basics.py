"""The primitives against the hand-computed anchors of the reference inventory (§2.12)."""

from ratchet.encoding import b64u_decode, b64u_encode
from ratchet.kdf import LABEL_CHAIN, LABEL_KEY_A, bootstrap_keys, kdf, message_key
from ratchet.keys import KeyPair, x25519


def test_bootstrap_chain_matches_reference_anchor() -> None:
    shared = x25519(b"\x22" * 32, KeyPair.from_secrets(b"\x11" * 32, b"\x33" * 32).x25519_pk)
    assert shared.hex() == "1fdc192faa0212a9aae7bb4f41b580227fd5ad3e5d777faae230dfe973f3e805"
    key_a, key_b = bootstrap_keys(shared, b"\x44" * 16)
    assert key_a.hex() == "f3a01a7e824210fb876995613e2754f032717fa1a801288b28c7f210d8b10a0c"
    assert key_b.hex() == "fc2d354583c51ac87d01c55f4540b550f525f94e8351dd06c29f0df3f5abd926"
    mk0 = message_key(key_a, 0)
    assert mk0.hex() == "9a3242ccc6b6533cb18ab475a46235705ac2bba31dfa139836e237a9b8924ea2"
    chain1 = kdf(mk0, key_a, LABEL_CHAIN)
    assert chain1.hex() == "715cac6b409ca87f808267d3b9987337c4bd3b3e9cd573e0ac7b6c296544cded"
    assert kdf(b"\x01" * 32, b"\x02" * 16, LABEL_KEY_A).hex().startswith("f27d0bad055b714f")


def test_base64url_is_unpadded_and_decoding_is_lenient_like_node() -> None:
    assert b64u_encode(b"\xfb\xff") == "-_8"
    assert b64u_decode("ab+/cd==!!") == b64u_decode("ab-_cd")
