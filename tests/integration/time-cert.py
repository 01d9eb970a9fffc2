#!/usr/bin/env python3
"""time-cert.py: certificates with a chosen validity window, for the time tests.

openssl 3.0 (Debian 12) can set neither a notBefore in the future nor one
a few seconds ago with `x509`/`req`, and `ca -startdate/-enddate` takes no
public key without a CSR; python3-cryptography (an independent X.509
implementation) signs with the file test CA and any key.

  time-cert.py KIND CA.key CA.pem OUT NOT_BEFORE NOT_AFTER [NAME] [PUBKEY.pem]

NOT_BEFORE and NOT_AFTER are seconds from now (negative: in the past).
KIND:
  client  RSA-2048 key made here, SAN rfc822Name NAME, EKU clientAuth and
          emailProtection: OUT.pem and OUT.key
  server  P-256 key made here, SAN IP 127.0.0.1 and DNS localhost, EKU
          serverAuth: OUT.pem and OUT.key
  group   for the existing public key PUBKEY.pem, SAN rfc822Name NAME (the
          list address), keyUsage keyEncipherment, EKU emailProtection:
          OUT.pem only

A membership certificate must be signed by the local CA, whose key is on
the token: its body is made here and signed there (pkcs11-tool).

  time-cert.py membership CA.pem OUT NOT_BEFORE NOT_AFTER GROUP
          RSA-2048 key made here, as the certificate server issues them:
          OUT.key and OUT.tbs (the DER TBSCertificate to sign with
          sha256WithRSAEncryption, the CA's algorithm)
  time-cert.py assemble OUT.tbs OUT.sig OUT.pem
          the certificate from its body and the token's signature
  time-cert.py crl CA.key CA.pem OUT NOT_BEFORE NOT_AFTER
          an empty CRL of the CA, lastUpdate and nextUpdate as given:
          OUT.pem
"""
import datetime
import ipaddress
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def der_len(n):
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def der_tlv(tag, body):
    return bytes([tag]) + der_len(len(body)) + body


def membership(ca_pem, out, nb, na, group):
    cacert = x509.load_pem_x509_certificate(open(ca_pem, "rb").read())
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "groupsrv membership"),
                                  x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, group)]))
         .issuer_name(cacert.subject)
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now + datetime.timedelta(seconds=int(nb)))
         .not_valid_after(now + datetime.timedelta(seconds=int(na)))
         .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier("urn:groupsrv:group:" + group)]),
                        critical=False)
         .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH,
                                               ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(cacert.public_key()), critical=False))
    # Signed here with a throw-away key only to get the body: the same
    # signature algorithm as the CA's (sha256WithRSAEncryption).
    body = b.sign(rsa.generate_private_key(public_exponent=65537, key_size=2048), hashes.SHA256())
    open(out + ".tbs", "wb").write(body.tbs_certificate_bytes)
    open(out + ".key", "wb").write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))


def assemble(tbs_path, sig_path, out_pem):
    tbs, sig = open(tbs_path, "rb").read(), open(sig_path, "rb").read()
    sha256_rsa = bytes.fromhex("300d06092a864886f70d01010b0500")
    der = der_tlv(0x30, tbs + sha256_rsa + der_tlv(0x03, b"\x00" + sig))
    cert = x509.load_der_x509_certificate(der)
    open(out_pem, "wb").write(cert.public_bytes(serialization.Encoding.PEM))


def crl(ca_key, ca_pem, out, last, nxt):
    cakey = serialization.load_pem_private_key(open(ca_key, "rb").read(), None)
    cacert = x509.load_pem_x509_certificate(open(ca_pem, "rb").read())
    now = datetime.datetime.now(datetime.timezone.utc)
    c = (x509.CertificateRevocationListBuilder()
         .issuer_name(cacert.subject)
         .last_update(now + datetime.timedelta(seconds=int(last)))
         .next_update(now + datetime.timedelta(seconds=int(nxt)))
         .sign(cakey, hashes.SHA256()))
    open(out + ".pem", "wb").write(c.public_bytes(serialization.Encoding.PEM))


def main():
    if sys.argv[1] == "crl":
        return crl(*sys.argv[2:7])
    if sys.argv[1] == "membership":
        return membership(*sys.argv[2:7])
    if sys.argv[1] == "assemble":
        return assemble(*sys.argv[2:5])
    kind, ca_key, ca_pem, out, nb, na = sys.argv[1:7]
    name = sys.argv[7] if len(sys.argv) > 7 else None
    cakey = serialization.load_pem_private_key(open(ca_key, "rb").read(), None)
    cacert = x509.load_pem_x509_certificate(open(ca_pem, "rb").read())
    key = None
    if kind == "client":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pub, cn = key.public_key(), name
        sans = [x509.RFC822Name(name)]
        eku = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION]
    elif kind == "server":
        key = ec.generate_private_key(ec.SECP256R1())
        pub, cn = key.public_key(), "127.0.0.1"
        sans = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        eku = [ExtendedKeyUsageOID.SERVER_AUTH]
    elif kind == "group":
        pub = serialization.load_pem_public_key(open(sys.argv[8], "rb").read())
        cn = name.split("@")[0]
        sans = [x509.RFC822Name(name)]
        eku = [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    else:
        sys.exit("time-cert.py: KIND must be client, server or group")
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(cacert.subject)
         .public_key(pub)
         .serial_number(x509.random_serial_number())
         .not_valid_before(now + datetime.timedelta(seconds=int(nb)))
         .not_valid_after(now + datetime.timedelta(seconds=int(na)))
         .add_extension(x509.SubjectAlternativeName(sans), critical=False)
         .add_extension(x509.ExtendedKeyUsage(eku), critical=False))
    if kind == "group":
        b = b.add_extension(x509.KeyUsage(False, False, True, False, False, False, False, False, False), critical=True)
    cert = b.sign(cakey, hashes.SHA256())
    open(out + ".pem", "wb").write(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        open(out + ".key", "wb").write(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))


if __name__ == "__main__":
    main()
