"""DKIM key pairs for ``trio-mta dkim keygen`` and the ``dkim_sign`` plugin's keys.

RSA keys are written as PKCS#1 PEM, Ed25519 keys (RFC 8463) as dkimpy reads them: the base64
of the 32-octet seed. The TXT record to publish at ``SELECTOR._domainkey.DOMAIN`` carries the
public key: SubjectPublicKeyInfo DER for RSA, the raw 32 octets for Ed25519.
"""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

KEY_TYPES = ("rsa", "ed25519")


def generate(key_type: str = "rsa", bits: int = 2048) -> tuple[bytes, str]:
    """A new private key (file contents) and the DNS TXT record value for it."""
    if key_type == "rsa":
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        private = rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        public = rsa_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return private, f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"
    if key_type == "ed25519":
        ed_key = ed25519.Ed25519PrivateKey.generate()
        seed = ed_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        public = ed_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return (
            base64.b64encode(seed) + b"\n",
            f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}",
        )
    raise ValueError(f"key type must be one of {', '.join(KEY_TYPES)}")


def txt_strings(record: str, size: int = 255) -> list[str]:
    """The record split into DNS character-strings of at most ``size`` octets."""
    return [record[i : i + size] for i in range(0, len(record), size)]


def zone_line(domain: str, selector: str, record: str) -> str:
    strings = " ".join(f'"{s}"' for s in txt_strings(record))
    return f"{selector}._domainkey.{domain}. IN TXT ( {strings} )"
