#!/usr/bin/env python3
"""Checks Esper's signing test vectors with nothing but the standard library.

The rule (docs/SIGNING.md): a signed Leyline message's MAC is
HMAC-SHA256(key, full_proto_name + b"\\0" + M), where M is the message's bytes
as transmitted with every top-level record of its signature field removed
(BusEnvelope: field 15) and every other byte kept, in order. Nothing is
decoded into objects or re-encoded: a scan of the record headers suffices.

Usage: verify.py vectors.txt   (exit status 0 when every vector is as expected)
"""
import hashlib
import hmac
import sys


def varint(b, i):
    value, shift = 0, 0
    while True:
        if i >= len(b) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = b[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def split_signature(b, field):
    """(the signed bytes M, the signature) of a message as transmitted."""
    signed, signature, i = bytearray(), b"", 0
    while i < len(b):
        start = i
        key, i = varint(b, i)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire_type == 0:
            _, i = varint(b, i)
        elif wire_type == 1:
            i += 8
        elif wire_type == 5:
            i += 4
        elif wire_type == 2:
            length, i = varint(b, i)
            value_start, i = i, i + length
        else:
            raise ValueError("groups are not allowed")
        if i > len(b):
            raise ValueError("truncated record")
        if number == field and wire_type == 2:
            signature = bytes(b[value_start:i])
        else:
            signed += b[start:i]
    return bytes(signed), signature


def main(path):
    key, vectors, current = None, [], None
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line == "[vector]":
            current = {}
            vectors.append(current)
            continue
        name, _, value = (part.strip() for part in line.partition("="))
        if current is None and name == "key":
            key = bytes.fromhex(value)
        elif current is not None:
            current[name] = value
    good = 0
    for v in vectors:
        data = bytes.fromhex(v["bytes"])
        m, signature = split_signature(data, 15)
        signed = b"esper.leyline.v1.BusEnvelope\0" + m
        mac = hmac.new(key, signed, hashlib.sha256).digest()
        valid = hmac.compare_digest(mac, signature)
        expected = v["valid"] == "true"
        ok = (
            valid == expected
            and signed.hex() == v["signed"]
            and mac.hex() == v["mac"]
        )
        good += ok
        print(f"{v['name']}: {'valid' if valid else 'invalid'} "
              f"({'as expected' if ok else 'NOT as expected'})")
    print(f"{len(vectors)} vectors, {good} as expected")
    return 0 if good == len(vectors) and vectors else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
