"""A private OpenLDAP slapd for tests.

:class:`Slapd` builds a cn=config with ``slapadd -n0`` (mdb backend, suffix
``dc=example,dc=org``, schemas core/cosine/inetorgperson/nis), loads a small
DIT with ``slapadd -n1``, generates a CA and a server certificate (and an
unrelated CA, for "wrong CA" tests) with ``cryptography``, and runs
``slapd -d 0`` in the foreground on 127.0.0.1 (ldap:// and ldaps://, free
ports) as the current user.  Everything lives in a temporary directory
removed by :meth:`Slapd.cleanup`.  It trusts the local slapd binaries and
/etc/ldap/schema; it is test code and holds test passwords only.

Users (uid, password): alice / alice-ssha ({SSHA}), bob / bob-crypt
({CRYPT}$6$…), carol / carol-plain (cleartext), each a posixAccount with
uidNumber/gidNumber/homeDirectory.  Service account ``cn=dovecot`` with
password ``dovecot-pw`` may read userPassword.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import subprocess
import tempfile
import time

from authd import schemes

SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SLAPADD = shutil.which("slapadd") or "/usr/sbin/slapadd"
SCHEMA_DIR = "/etc/ldap/schema"
MODULE_DIR = "/usr/lib/ldap"
SUFFIX = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "admin-secret"
SERVICE_DN = f"cn=dovecot,{SUFFIX}"
SERVICE_PW = "dovecot-pw"
PEOPLE = f"ou=people,{SUFFIX}"

#: uid → (password, stored userPassword scheme, uidNumber)
USERS = {
    "alice": ("alice-ssha", "SSHA", 1001),
    "bob": ("bob-crypt", "SHA512-CRYPT", 1002),
    "carol": ("carol-plain", None, 1003),
}


def available() -> str | None:
    """None if slapd can run here, else why not."""
    for tool in (SLAPD, SLAPADD):
        if not os.access(tool, os.X_OK):
            return f"{tool} not installed"
    for schema in ("core", "cosine", "inetorgperson", "nis"):
        if not os.path.exists(f"{SCHEMA_DIR}/{schema}.ldif"):
            return f"{SCHEMA_DIR}/{schema}.ldif missing"
    return None


class _PortTaken(Exception):
    """slapd exited at start (its port was taken meanwhile)."""


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a TCP socket listening on ``port``."""
    inodes = set()
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


def free_port() -> int:
    """A port free now and outside the ephemeral range (see tests.harness)."""
    from tests.harness import free_port as pick

    return pick()


def _stored(password: str, scheme: str | None) -> str:
    if scheme is None:
        return password
    value = schemes.generate(password, scheme)
    if scheme == "SHA512-CRYPT":  # as an LDAP directory stores it
        value = "{CRYPT}" + value.split("}", 1)[1]
    return value


def _make_ca(name: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_certs(directory: str) -> dict[str, str]:
    """CA, server cert (localhost/127.0.0.1) signed by it, and another CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key, ca_cert = _make_ca("pydovecot test CA")
    _, other_cert = _make_ca("some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {
        "ca": os.path.join(directory, "ca.pem"),
        "other_ca": os.path.join(directory, "other-ca.pem"),
        "cert": os.path.join(directory, "server.pem"),
        "key": os.path.join(directory, "server.key"),
    }
    pem = serialization.Encoding.PEM
    with open(paths["ca"], "wb") as f:
        f.write(ca_cert.public_bytes(pem))
    with open(paths["other_ca"], "wb") as f:
        f.write(other_cert.public_bytes(pem))
    with open(paths["cert"], "wb") as f:
        f.write(cert.public_bytes(pem))
    with open(paths["key"], "wb") as f:
        f.write(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
    os.chmod(paths["key"], 0o600)
    return paths


def config_ldif(directory: str, certs: dict[str, str]) -> str:
    includes = "\n".join(
        f"include: file://{SCHEMA_DIR}/{name}.ldif"
        for name in ("core", "cosine", "inetorgperson", "nis")
    )
    return f"""\
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {directory}/slapd.pid
olcTLSCACertificateFile: {certs["ca"]}
olcTLSCertificateFile: {certs["cert"]}
olcTLSCertificateKeyFile: {certs["key"]}

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: {MODULE_DIR}
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{includes}

dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcDbDirectory: {directory}/data
olcDbMaxSize: 33554432
olcSuffix: {SUFFIX}
olcRootDN: {ROOT_DN}
olcRootPW: {ROOT_PW}
olcAccess: {{0}}to attrs=userPassword by dn.exact="{SERVICE_DN}" read by anonymous auth by * none
olcAccess: {{1}}to * by * read
"""


def data_ldif() -> str:
    parts = [
        f"""\
dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: {SERVICE_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: dovecot
userPassword: {SERVICE_PW}

dn: {PEOPLE}
objectClass: organizationalUnit
ou: people
"""
    ]
    for uid, (password, scheme, number) in USERS.items():
        parts.append(
            f"""\
dn: uid={uid},{PEOPLE}
objectClass: inetOrgPerson
objectClass: posixAccount
uid: {uid}
cn: {uid.title()}
sn: {uid.title()}
mail: {uid}@example.org
uidNumber: {number}
gidNumber: {number + 1000}
homeDirectory: /home/{uid}
userPassword: {_stored(password, scheme)}
"""
        )
    return "\n".join(parts)


class Slapd:
    """One private slapd; :meth:`start` / :meth:`stop` may be repeated."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="slapd-test-")
        self._set_ports()
        self.started_once = False
        self.process: subprocess.Popen | None = None
        self.certs = make_certs(self.dir)
        self.config_dir = os.path.join(self.dir, "slapd.d")
        os.mkdir(self.config_dir)
        os.mkdir(os.path.join(self.dir, "data"))
        self._slapadd("0", config_ldif(self.dir, self.certs))
        self._slapadd("1", data_ldif())

    def _slapadd(self, db: str, ldif: str) -> None:
        path = os.path.join(self.dir, f"db{db}.ldif")
        with open(path, "w") as f:
            f.write(ldif)
        proc = subprocess.run(
            [SLAPADD, "-n", db, "-F", self.config_dir, "-l", path],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"slapadd -n{db} failed: {proc.stderr.strip()}")

    def _set_ports(self) -> None:
        self.port = free_port()
        self.ldaps_port = free_port()
        self.uri = f"ldap://127.0.0.1:{self.port}"
        self.ldaps_uri = f"ldaps://127.0.0.1:{self.ldaps_port}"

    def start(self, timeout: float = 10.0) -> None:
        """Run slapd and wait until it listens on both ports.

        The ports were free when picked but another process may bind one
        before slapd does: then slapd exits, and the first start tries again
        on fresh ports.  "Listening" means slapd's own socket (matched by
        inode in /proc), never whoever else answers on the port."""
        if self.process is not None:
            return
        attempts = 1 if self.started_once else 5
        for attempt in range(attempts):
            try:
                self._start(timeout)
                self.started_once = True
                return
            except _PortTaken:
                if attempt == attempts - 1:
                    raise RuntimeError(f"slapd exited at start; see {self.dir}/slapd.log") from None
                self._set_ports()

    def _start(self, timeout: float) -> None:
        self.log = open(os.path.join(self.dir, "slapd.log"), "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [SLAPD, "-d", "0", "-h", f"{self.uri}/ {self.ldaps_uri}/", "-F", self.config_dir],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        pending = {self.port, self.ldaps_port}
        while pending:
            if self.process.poll() is not None:
                self.process = None
                raise _PortTaken()
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("slapd did not start listening in time")
            for port in list(pending):
                if _listens(self.process.pid, port):
                    pending.discard(port)
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop slapd (SIGTERM, then SIGKILL) and wait for it."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self.log.close()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
